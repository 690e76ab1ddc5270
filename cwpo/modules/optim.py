"""The optimiser and learning-rate schedule every cwpo module shares, configured by typed arguments."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cwpo.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    """Optimiser and schedule (paper, appendix G: AdamW, cosine, 100 warm-up steps, weight decay 0.05).

    Args:
        lr: peak learning rate.
        optimizer: ``adamw`` (decoupled weight decay) or ``adam``.
        weight_decay: weight decay; not applied to biases and norms.
        betas: Adam betas.
        scheduler: ``cosine`` (to 0 after warm-up), ``linear`` (to 0) or ``constant`` (after warm-up).
        warmup_steps: linear warm-up from 0: a number of optimiser steps, or, below 1, a share of the run's steps
            (``0.1``: the first tenth, rounded up), as transformers' ``TrainingArguments.warmup_steps`` reads it. A
            warm-up as long as the run is logged as a warning (the peak ``lr`` is never reached), never shortened.
    """

    lr: float = 1e-4
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | float = 0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"OptimConfig.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or (self.warmup_steps > 1 and self.warmup_steps != int(self.warmup_steps)):
            raise ConfigError(
                f"OptimConfig.warmup_steps must be a whole number of steps or a share below 1, got {self.warmup_steps}"
            )
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError(f"OptimConfig.optimizer must be 'adamw' or 'adam', got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"OptimConfig.scheduler must be cosine, linear or constant, got {self.scheduler!r}")


# cwpo's schedule names -> transformers' (``constant`` keeps the warm-up, as cosine and linear do).
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def warmup_steps(config: OptimConfig, total_steps: int) -> int:
    """The warm-up in optimiser steps: ``config.warmup_steps`` as it is, or its share of ``total_steps``."""
    if 0 < config.warmup_steps < 1:
        return math.ceil(config.warmup_steps * total_steps)
    return int(config.warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int):
    """transformers' warm-up + decay schedule of ``config`` over a run of ``total_steps`` optimiser steps
    (``0``: unknown, e.g. an iterable dataset: the rate stays at its peak after warm-up)."""
    from transformers import get_scheduler

    warmup = warmup_steps(config, total_steps)
    if total_steps > 0 and warmup >= total_steps:
        steps = f"{total_steps} optimiser step" + ("s" if total_steps != 1 else "")
        if rank_zero_only.rank == 0:  # a log line (once, not a Python warning): cwpo run shows it as it is
            log.warning(f"the warm-up ({warmup} steps) lasts the whole run ({steps}): the learning rate never "
                        f"reaches its peak {config.lr:g}; lower optim.warmup_steps (a share such as 0.1 scales "
                        "with the run)")  # fmt: skip
    name = _SCHEDULERS[config.scheduler] if total_steps > 0 else "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def configure_optimizers(module, config: OptimConfig):
    """Build the optimiser over ``module``'s trainable parameters and a per-step schedule.

    The schedule's length comes from the trainer (``estimated_stepping_batches``), so it follows
    ``max_epochs``, gradient accumulation and the number of devices without being set by hand.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = cls(groups, lr=config.lr, betas=config.betas)
    trainer = getattr(module, "_trainer", None)
    total = trainer.estimated_stepping_batches if trainer is not None else 0
    total = int(total) if math.isfinite(total) else 0
    scheduler = build_scheduler(optimizer, config, total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
