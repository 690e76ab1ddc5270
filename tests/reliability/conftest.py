"""Helpers of the reliability tests: run ``python -m cwpo.fit`` in this process or in a subprocess, read results.

Every run uses a config of ``tests/reliability/configs`` (tiny Llama, hidden 32, 2 layers, 40 synthetic pairs),
a CSV logger at ``<root>/logs/version_0`` and the test-only callbacks of :mod:`tests.reliability.callbacks`.
Subprocesses run single-threaded (``OMP_NUM_THREADS=1``), as this process does (``tests/conftest.py``), so a
subprocess and an in-process run of the same config compute bit for bit the same numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "configs"


def fit_args(model: str, root: Path, *, every_n_train_steps: int | None = None, extra: list[str] = ()) -> list[str]:
    """LightningCLI arguments of a reliability run of ``model`` (its config file) writing under ``root``."""
    callbacks: list[dict[str, Any]] = [
        {"class_path": "tests.reliability.callbacks.KillAtStep"},
        {"class_path": "tests.reliability.callbacks.RecordSteps", "init_args": {"path": str(root / "steps.jsonl")}},
    ]
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(root), "name": "logs", "version": 0}}  # fmt: skip
    return [
        "--config", str(CONFIGS / f"{model}.yaml"),
        "--trainer.default_root_dir", str(root),
        "--trainer.logger", json.dumps(logger),
        "--trainer.callbacks", json.dumps(callbacks),
        # The shipped checkpoint (cwpo.modules.checkpoint.PeriodicCheckpoint), every N steps and no time trigger.
        *(["--checkpoint.every_n_steps", str(every_n_train_steps), "--checkpoint.every_minutes", "0"]
          if every_n_train_steps is not None else ["--trainer.enable_checkpointing", "false"]),
        *extra,
    ]  # fmt: skip


def write_ddp_data(data_dir: Path) -> None:
    """``train.jsonl`` (40 synthetic pairs with varied ``confidence``) and ``test.jsonl`` (8 pairs) in ``data_dir``."""
    from cwpo.data import save_pairs
    from cwpo.data.synthetic import load_synthetic

    train = load_synthetic(n_pairs=40, split="train")
    confidence = torch.rand(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    save_pairs(train.add_column("confidence", confidence), data_dir / "train.jsonl")
    save_pairs(load_synthetic(n_pairs=8, split="test", n_test_pairs=8), data_dir / "test.jsonl")


def ddp_fit_args(model: str, root: Path, data_dir: Path, *, devices: int, global_batch: int = 8) -> list[str]:
    """Arguments of the DDP comparison runs: ``global_batch`` pairs a step split over ``devices`` processes.

    The data order is comparable as it is: ``LengthGroupedSampler`` builds the same length-grouped global batches
    for any number of processes and deals each one out over the ranks, so DDP's global batch k holds exactly the
    pairs of the one-process batch k. Dropout is off (DDP ranks draw the same masks from the same seed, one
    process draws one mask for the whole batch).
    """
    dataset = {"name": "local", "path": str(data_dir / "train.jsonl"), "test_path": str(data_dir / "test.jsonl"),
               "args": {}}  # fmt: skip
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 3, "save_last": True, "save_top_k": 0}},
        {"class_path": "tests.reliability.callbacks.RecordSteps",
         "init_args": {"path": str(data_dir / f"{model}-{devices}-steps-rank{{rank}}.jsonl")}},
    ]  # fmt: skip
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(root), "name": "logs", "version": 0}}  # fmt: skip
    args = [
        "--config", str(CONFIGS / f"{model}.yaml"),
        "--data.dataset", json.dumps(dataset),
        "--data.part", "train", "--data.val_part", "test",
        "--data.batch_size", str(global_batch // devices), "--data.eval_batch_size", str(global_batch // devices),
        "--trainer.default_root_dir", str(root),
        "--trainer.logger", json.dumps(logger),
        "--trainer.callbacks", json.dumps(callbacks),
        "--trainer.devices", str(devices),
        "--trainer.strategy", "ddp" if devices > 1 else "auto",
    ]  # fmt: skip
    if model == "policy":
        # The cached reference: rank 0 computes and writes it, the other rank reads it.
        args += ["--model.lora.dropout", "0.0", "--model.reference", "precomputed"]
    return args


def fit_in_process(model: str, args: list[str]):
    """Run ``python -m cwpo.fit --model MODEL ARGS`` in this process; the LightningCLI object after ``fit``."""
    from cwpo import fit

    return fit.build_cli(model, args)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a fit subprocess: single-threaded, offline, with the repository importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def spawn_fit(model: str, args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start ``python -m cwpo.fit --model MODEL ARGS`` in a subprocess, output to ``log``."""
    out = open(log, "w")  # noqa: SIM115 - closed by the Popen owner's wait, with the process
    return subprocess.Popen([sys.executable, "-m", "cwpo.fit", "--model", model, *args], cwd=REPO,
                            env=subprocess_env(**env), stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def read_steps(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def last_checkpoint(root: Path) -> Path:
    return root / "logs" / "version_0" / "checkpoints" / "last.ckpt"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded as cwpo loads checkpoints: no pickled objects (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, exact: bool = True,
                        rtol: float = 0.0, atol: float = 0.0) -> None:  # fmt: skip
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if exact:
            assert torch.equal(actual[name], value), f"{name} differs: max |diff| {(actual[name] - value).abs().max()}"
        else:
            torch.testing.assert_close(actual[name], value, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimiser updates (the LoRA adapter for LoRA modules), detached copies."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
