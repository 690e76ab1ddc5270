"""What a resumed run needs beyond Lightning's checkpoint, so that it ends where an uninterrupted run ends.

Every cwpo module returns :class:`ResumeState` from ``configure_callbacks``, so it is there under any trainer
configuration (``python -m cwpo.fit``, ``cwpo run``, a plain ``Trainer``). It adds two things to each checkpoint:

- **The global random states** (torch CPU and CUDA, Python, NumPy). Lightning does not save them, so after a resume
  dropout (LoRA's ``lora_dropout``, the annotator's backbone dropout) would draw other masks than the uninterrupted
  run draws from the same step on. They are put back at ``on_train_start``, the last hook before the first step.
  (Under DDP the checkpoint holds rank 0's states and every rank gets them: right for runs seeded alike on every
  rank, which is what ``seed_everything`` does.)
- **The training loader's position in its epoch** (:class:`cwpo.data.sampler.ResumableDataLoader`). Lightning saves
  it too, but restores it only while it builds the training loader after the checkpoint's loop state is loaded;
  when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (ours do, for the schedule length) the
  loader is built earlier, during strategy setup, and Lightning 2.6 silently restores nothing: the resumed epoch
  would start again at its first batch. The position is handed to the loader at ``on_train_start``, before its
  first batch is drawn.

Everything saved is plain (tensors, ints, lists), so checkpoints still load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The process's global random states as plain values (no NumPy arrays, for ``weights_only`` loading)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
        "python": [version, list(state), gauss],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back states from :func:`collect_rng_states` (CUDA states only where as many devices are visible)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("torch.cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class ResumeState(L.Callback):
    """Saves the random states and the training loader's position in every checkpoint; restores both on resume."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": collect_rng_states()}
        loader = self._train_loader()
        if loader is not None:
            state["train_loader"] = loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if not pending:
            return
        loader = self._train_loader()
        if loader is not None and "train_loader" in pending:
            loader.load_state_dict(pending["train_loader"])
        if "rng" in pending:
            set_rng_states(pending["rng"])

    def _train_loader(self):
        from cwpo.data.sampler import ResumableDataLoader

        loader = self._trainer.train_dataloader if self._trainer is not None else None
        return loader if isinstance(loader, ResumableDataLoader) else None
