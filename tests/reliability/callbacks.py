"""Test-only Lightning callbacks for the reliability tests, passed to ``python -m cwpo.fit`` with ``--trainer.callbacks``.

- :class:`KillAtStep`: ``SIGKILL`` its own process once ``CWPO_TEST_KILL_AT_STEP`` optimiser steps are done (read
  from the environment, so one config serves the killed, the resumed and the uninterrupted run).
- :class:`RecordSteps`: append each training step's batch rows and loss to a jsonl file, flushed per line, so the
  record of a killed run survives the kill.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import torch

KILL_ENV = "CWPO_TEST_KILL_AT_STEP"


class KillAtStep(L.Callback):
    """``SIGKILL`` this process at the start of the first batch after ``$CWPO_TEST_KILL_AT_STEP`` optimiser steps.

    Acting at the *start* of the next batch (not at the end of step k) matters: Lightning runs ``ModelCheckpoint``
    after every other callback, so step k's checkpoint is on disk by then, and no step after k has begun.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = os.environ.get(KILL_ENV)
        if step is not None and trainer.global_step == int(step):
            os.kill(os.getpid(), signal.SIGKILL)


class RecordSteps(L.Callback):
    """Write ``{"step", "epoch", "batch_idx", "rows", "loss"}`` per training step to ``path`` (jsonl, appended).

    ``rows`` are the batch's dataset row indices (``index``), or a digest of ``input_ids`` when a batch has none.
    ``{rank}`` in ``path`` becomes the process's global rank (one file per DDP rank); the loss is this rank's.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = batch["index"].tolist() if "index" in batch else batch["input_ids"].sum(-1).tolist()
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "rows": rows,
            "loss": float(loss.detach().float()) if isinstance(loss, torch.Tensor) else None,
            "pid": os.getpid(),
        }
        path = Path(str(self.path).format(rank=trainer.global_rank))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
