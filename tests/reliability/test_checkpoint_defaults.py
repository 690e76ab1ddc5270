"""What ``python -m cwpo.fit`` checkpoints with its shipped defaults, and that ``--ckpt_path`` resumes from it.

No test here adds a ``ModelCheckpoint``: the checkpoints are the ones a user gets (``--checkpoint.*``,
:class:`cwpo.modules.checkpoint.PeriodicCheckpoint`), the logger is the shipped one (``runs/<model>/lightning_logs``
under the working directory, a new ``version_N`` per run).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import (
    CONFIGS,
    assert_same_tensors,
    fit_in_process,
    load_checkpoint,
    read_steps,
    subprocess_env,
    trainable_state,
)


def _default_args(model: str, root: Path, extra: list[str] = ()) -> list[str]:
    """The reliability config of ``model`` with the shipped checkpointing and logger; only the test callbacks that
    record the steps and kill the process are added (``--trainer.callbacks`` holds no checkpoint by default)."""
    callbacks = [
        {"class_path": "tests.reliability.callbacks.KillAtStep"},
        {"class_path": "tests.reliability.callbacks.RecordSteps", "init_args": {"path": str(root / "steps.jsonl")}},
    ]
    return ["--config", str(CONFIGS / f"{model}.yaml"), "--trainer.callbacks", json.dumps(callbacks), *extra]


def _checkpoints(root: Path, model: str) -> dict[str, int]:
    logs = root / "runs" / model / "lightning_logs"
    return {
        str(p.relative_to(logs)): load_checkpoint(p)["global_step"] for p in sorted(logs.glob("*/checkpoints/*.ckpt"))
    }


@pytest.mark.slow
def test_a_killed_fit_with_the_shipped_defaults_resumes_with_ckpt_path_last(tmp_path, monkeypatch):
    """The policy (LoRA with dropout), one pair a step: 40 steps an epoch, 3 epochs. SIGKILL-ed at the start of step
    111 (mid epoch 2), the shipped checkpoint of step 100 (every 100 steps) is on disk; ``--ckpt_path last`` in a
    new process (a new ``version_1``) finds it in ``version_0``, goes on from step 101 and ends bit for bit where an
    uninterrupted run ends."""
    from cwpo.modules.checkpoint import EVERY_N_STEPS

    assert EVERY_N_STEPS == 100  # the kill point below is placed for this default
    model, kill_at, extra = "policy", 111, ["--data.batch_size", "1", "--trainer.max_epochs", "3"]
    killed, full = tmp_path / "killed", tmp_path / "full"
    killed.mkdir()
    full.mkdir()
    with open(killed / "subprocess.log", "w") as out:  # the shipped run folder is under the working directory
        process = subprocess.Popen([sys.executable, "-m", "cwpo.fit", "--model", model,
                                    *_default_args(model, killed, extra)], cwd=killed, stdout=out,
                                   stderr=subprocess.STDOUT, env=subprocess_env(CWPO_TEST_KILL_AT_STEP=str(kill_at)))  # fmt: skip
    try:
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    log = (killed / "subprocess.log").read_text()
    assert returncode == -signal.SIGKILL, log[-3000:]
    assert [r["step"] for r in read_steps(killed / "steps.jsonl")] == list(range(1, kill_at + 1))
    assert _checkpoints(killed, model) == {"version_0/checkpoints/last.ckpt": 100}

    monkeypatch.chdir(full)
    uninterrupted = fit_in_process(model, _default_args(model, full, extra))
    monkeypatch.chdir(killed)
    resumed = fit_in_process(model, _default_args(model, killed, [*extra, "--ckpt_path", "last"]))

    assert Path(resumed.trainer.ckpt_path).resolve() == (
        killed / "runs" / model / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    )
    full_steps, resumed_steps = read_steps(full / "steps.jsonl"), read_steps(killed / "steps.jsonl")[kill_at:]
    assert len(full_steps) == 120
    assert [r["step"] for r in resumed_steps] == list(range(101, 121))  # continued from the saved step
    assert [(r["epoch"], r["batch_idx"], r["rows"], r["loss"]) for r in resumed_steps] == [
        (r["epoch"], r["batch_idx"], r["rows"], r["loss"]) for r in full_steps[100:]
    ]
    assert_same_tensors(trainable_state(resumed.model), trainable_state(uninterrupted.model))
    assert_same_tensors(resumed.model.state_dict(), uninterrupted.model.state_dict())
    # The resumed run wrote its checkpoints next to the one it resumed from: the next ``last`` is found again.
    assert _checkpoints(killed, model) == {"version_0/checkpoints/last.ckpt": 120}


@pytest.mark.parametrize("model, config", [("annotator", "annotator"), ("pairrm", "annotator"), ("sft", "sft"),
                                           ("policy", "policy")])  # fmt: skip
def test_every_module_resumes_from_an_explicit_checkpoint_path(model, config, tmp_path, monkeypatch):
    """``--ckpt_path FILE`` of every registered module (the annotator's checkpoint holds ``annotator_type``, a
    hyper-parameter that is no argument of the module; it used to stop LightningCLI). (Online: tests/modules.)"""
    monkeypatch.chdir(tmp_path)
    base = ["--config", str(CONFIGS / f"{config}.yaml"), "--trainer.limit_val_batches", "0"]
    fit_in_process(model, [*base, "--trainer.max_steps", "2"])
    ckpt = tmp_path / "runs" / model / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt)["global_step"] == 2
    resumed = fit_in_process(model, [*base, "--trainer.max_steps", "3", "--ckpt_path", str(ckpt)])
    assert resumed.trainer.global_step == 3 and Path(resumed.trainer.ckpt_path) == ckpt


def test_checkpoints_every_n_steps_every_m_minutes_and_at_the_end(tmp_path, monkeypatch):
    """Both triggers of the shipped callback, on a toy module (4 steps an epoch, 3 epochs) and a fake clock that
    advances 4 minutes a step: every 5 steps, every 10 minutes (the third step after a save), and at each epoch end."""
    import lightning as L

    from cwpo.modules import checkpoint
    from tests.toy_modules import ToyDataModule, ToyModule

    now = [0.0]
    monkeypatch.setattr(checkpoint, "_clock", lambda: now[0])
    saved: list[int] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            now[0] += 240.0

    class Recorder(checkpoint.PeriodicCheckpoint):
        def _save_checkpoint(self, trainer, filepath):
            saved.append(trainer.global_step)
            super()._save_checkpoint(trainer, filepath)

    callback = Recorder(every_n_steps=5, every_minutes=10, dirpath=str(tmp_path))
    trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[Clock(), callback], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(ToyModule(), ToyDataModule())
    # steps 3 (12 min), 4 (epoch end), 5 (every 5), 8 (epoch end, 12 min), 10 (every 5), 12 (epoch end)
    assert saved == [3, 4, 5, 8, 10, 12]
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 12
    with pytest.raises(ValueError, match="every_n_steps and every_minutes must be >= 0"):
        checkpoint.PeriodicCheckpoint(every_n_steps=-1)


def test_fit_without_checkpointing_or_with_its_own_checkpoint_adds_none(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cwpo import fit
    from cwpo.modules.checkpoint import PeriodicCheckpoint

    monkeypatch.setitem(fit.REGISTRY, "toy", fit.Entry("tests.toy_modules:ToyModule", "tests.toy_modules:ToyDataModule",
                                                       "toy"))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    cli = fit.build_cli("toy", ["--trainer.max_steps", "1", "--trainer.enable_checkpointing", "false"])
    assert not [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    own = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_top_k": 0}}])
    cli = fit.build_cli("toy", ["--trainer.max_steps", "1", "--trainer.callbacks", own])
    kinds = [type(c) for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert kinds == [ModelCheckpoint] and PeriodicCheckpoint not in kinds
