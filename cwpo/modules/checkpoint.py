"""The checkpoint ``python -m cwpo.fit`` writes by default: ``last.ckpt`` every N optimiser steps, every M minutes,
at each epoch end and at the end of training, so a killed run loses at most N steps or M minutes of work.

Lightning's own ``ModelCheckpoint`` takes one trigger only (steps, minutes or epochs), and with ``save_top_k=0`` it
writes ``last.ckpt`` only when a step or time trigger fired, so our default used to leave nothing on disk until the
run ended. :class:`PeriodicCheckpoint` keeps Lightning's saving (atomic, the state of every callback) and adds both
triggers and the epoch-end save.

``--ckpt_path last`` looks for ``last.ckpt`` in this run's checkpoint folder; with a logger that numbers its runs
(``lightning_logs/version_N``) a resumed run is a new ``version_N`` with an empty folder. :class:`PeriodicCheckpoint`
also looks in the sibling ``version_*/checkpoints`` folders of the same logger (the newest file wins, as Lightning
picks it), and a run resumed from one of them goes on writing its checkpoints next to the one it resumed from.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

# Defaults: a checkpoint costs one write of the model and optimiser state; every 100 steps or 10 minutes, whichever
# comes first, bounds what a kill loses without making small runs mostly I/O.
EVERY_N_STEPS = 100
EVERY_MINUTES = 10.0
_clock = time.monotonic  # (a test sets the clock)


class PeriodicCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_steps`` optimiser steps and every ``every_minutes`` minutes (0 turns a trigger
    off), at each epoch end and at the end of training. ``dirpath`` defaults to the logger's
    ``<save_dir>/<name>/<version>/checkpoints``, as for Lightning's ``ModelCheckpoint``."""

    def __init__(
        self, every_n_steps: int = EVERY_N_STEPS, every_minutes: float = EVERY_MINUTES, dirpath: str | None = None
    ):
        if every_n_steps < 0 or every_minutes < 0:
            raise ValueError(f"every_n_steps and every_minutes must be >= 0, got {every_n_steps}, {every_minutes}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0)
        self.every_n_steps = int(every_n_steps)
        self.every_minutes = float(every_minutes)
        self._user_dirpath = dirpath
        self._saved_at: float | None = None

    # ------------------------------------------------------------------------------------------------ triggers

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_at = _clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches) != 0:
            return  # mid gradient accumulation: the accumulated gradients are not in a checkpoint
        if self._should_skip_saving_checkpoint(trainer):
            return
        step_due = self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0
        time_due = self.every_minutes > 0 and _clock() - (self._saved_at or 0.0) >= self.every_minutes * 60
        time_due = trainer.strategy.broadcast(time_due)  # every rank decides as rank 0 does (no hang under DDP)
        if step_due or time_due:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_new(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_new(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_last_if_new(trainer)  # e.g. max_steps reached mid-epoch

    def _save_last_if_new(self, trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._saved_at = _clock()

    # ------------------------------------------------------------------------------------------- ckpt_path last

    def _find_last_checkpoints(self, trainer) -> set[str]:
        found = super()._find_last_checkpoints(trainer)
        if self._user_dirpath is None:
            own = Path(self._ModelCheckpoint__resolve_ckpt_dir(trainer))
            pattern = f"*/{own.name}/{self.CHECKPOINT_NAME_LAST}*{self.FILE_EXTENSION}"
            found |= {os.path.normpath(p) for p in own.parent.parent.glob(pattern) if p.is_file()}
        return found

    def load_state_dict(self, state_dict) -> None:
        # A run resumed from a sibling version's checkpoint goes on writing next to it, so the next ``last`` is there.
        saved = state_dict.get("dirpath")
        if self._user_dirpath is None and saved and self.dirpath and saved != self.dirpath:
            if Path(saved).parent.parent == Path(self.dirpath).parent.parent and Path(saved).is_dir():
                self.dirpath = saved
        super().load_state_dict(state_dict)
