"""What ``cwpo run`` shows and logs: a quiet console (each line once, no third-party bars, tips or deprecation
warnings unless ``verbose``), a progress bar inside each training stage, and each stage's own logger."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

# ``ExperimentConfig.logger``: each training stage's logger, and the package it needs.
LOGGERS = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "none": None}


def stage_bar(name: str):
    """A Lightning callback: a tqdm bar per training epoch on stderr (``<stage> epoch k/n``, batches/s, loss)."""
    from lightning.pytorch import Callback
    from tqdm.auto import tqdm

    class StageBar(Callback):
        bar = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            total = trainer.num_training_batches if trainer.num_training_batches != float("inf") else None
            self.bar = tqdm(total=total, desc=f"{name} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                            unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True)  # fmt: skip

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.bar is not None:
                loss = trainer.callback_metrics.get("train/loss")
                self.bar.update(1)
                if loss is not None:
                    self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StageBar()


class _Once(logging.Filter):
    """Lets each distinct log message through once (the data summary every stage that loads the data repeats)."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Lightning announces devices and tips at every Trainer; a pipeline of dozens of them should not. Quiet:
    Lightning below warnings, no transformers/datasets bars, no deprecation or Lightning hint warnings, DeepSpeed's
    errors only, each log message once. ``verbose``: all of it, as the libraries print it, but still each Lightning
    line once (its own handler prints it; it no longer also propagates to the root logger's)."""
    import warnings

    import lightning.pytorch  # noqa: F401  importing lightning resets its loggers: set levels after the import
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.propagate = lg.propagate and not lg.handlers
        if not verbose:
            lg.setLevel(logging.WARNING)
    if verbose:
        try:
            yield
        finally:
            for lg, (level, propagate) in zip(loggers, saved, strict=True):
                lg.setLevel(level)
                lg.propagate = propagate
        return
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled(), datasets_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" at every stage
    datasets_logging.disable_progress_bar()
    once, handlers = _Once(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(once)
    # DeepSpeed prints "Setting accelerator to CPU" on stdout at import; its logger resets its level then, a filter
    # on the logger object stays
    deepspeed_logger = logging.getLogger("DeepSpeed")
    deepspeed_logger.addFilter(_errors_only)
    try:
        with warnings.catch_warnings():
            for category in (PossibleUserWarning, DeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)
        deepspeed_logger.removeFilter(_errors_only)
        if bars[0]:
            hf_logging.enable_progress_bar()
        if bars[1]:
            datasets_logging.enable_progress_bar()
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate


def finish_wandb() -> None:
    """Close the open W&B run, if W&B is in use (each stage logs to its own run)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def stage_logger(kind: str, folder: Path, run_dir: Path, stage: str, method: str, seed: int | str):
    """Stage ``stage``'s own logger, named ``<stage>/<method>/seed<k>``: a CSV log in the stage folder
    (``logs/version_0``), a TensorBoard run under ``<run_dir>/tensorboard/``, or a W&B run (project
    ``$WANDB_PROJECT`` or ``cwpo``, one group per run folder, files under ``<run_dir>/wandb``)."""
    name = f"{stage}/{method}/seed{seed}"
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(folder), name="logs", version=0)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(run_dir / "tensorboard"), name=f"{stage}/{method}", version=f"seed{seed}",
                                 default_hp_metric=False)  # fmt: skip
    import os

    from lightning.pytorch.loggers import WandbLogger

    finish_wandb()  # WandbLogger would reuse a W&B run still open (the previous stage's)
    run_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(name=name, project=os.environ.get("WANDB_PROJECT", "cwpo"), save_dir=str(run_dir),
                       group=run_dir.resolve().name, job_type=stage)  # fmt: skip
