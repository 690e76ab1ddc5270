"""The optimiser and learning-rate schedule every cwpo module shares, configured by typed arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cwpo.errors import ConfigError


@dataclass
class OptimConfig:
    """Optimiser and schedule (paper, appendix G: AdamW, cosine, 100 warm-up steps, weight decay 0.05).

    Args:
        lr: peak learning rate.
        optimizer: ``adamw`` (decoupled weight decay) or ``adam``.
        weight_decay: weight decay; not applied to biases and norms.
        betas: Adam betas.
        scheduler: ``cosine`` (to 0 after warm-up), ``linear`` (to 0) or ``constant`` (after warm-up).
        warmup_steps: linear warm-up from 0, in optimiser steps. Capped at a tenth of the run when the run is
            shorter than ten times this (a 100-step warm-up would otherwise swallow a tiny run).
    """

    lr: float = 1e-4
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"OptimConfig.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"OptimConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError(f"OptimConfig.optimizer must be 'adamw' or 'adam', got {self.optimizer!r}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"OptimConfig.scheduler must be cosine, linear or constant, got {self.scheduler!r}")


def _lr_lambda(config: OptimConfig, total_steps: int):
    warmup = min(config.warmup_steps, max(total_steps // 10, 0)) if total_steps > 0 else config.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.scheduler == "constant" or total_steps <= warmup:
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if config.scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


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
    total = int(trainer.estimated_stepping_batches) if trainer is not None else 0
    if not math.isfinite(total):
        total = 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
