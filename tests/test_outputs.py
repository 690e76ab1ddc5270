"""Outputs that never clobber each other or lock others out: an earlier run's export is not replaced, a
``fast_dev_run`` exports nothing, files and folders get the umask's permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cwpo import fit
from cwpo.io import atomic_path, write_json

CONFIGS = Path(__file__).resolve().parent / "reliability" / "configs"


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_files_and_folders_follow_the_umask(tmp_path, umask_022):
    write_json(tmp_path / "report.json", {"a": 1})
    with atomic_path(tmp_path / "adapter", is_dir=True) as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "adapter" / "weights.bin").stat().st_mode) == 0o644


def _sft(tmp_path, *extra):
    return ["--config", str(CONFIGS / "sft.yaml"), "--model.export_dir", str(tmp_path / "adapter"),
            "--trainer.limit_val_batches", "0", *extra]  # fmt: skip


def test_fast_dev_run_never_overwrites_an_export_and_a_new_run_refuses_to(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit.build_cli("sft", _sft(tmp_path, "--trainer.max_steps", "2"))
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    exported = weights.read_bytes()

    fit.build_cli("sft", _sft(tmp_path, "--trainer.fast_dev_run", "true"))
    assert weights.read_bytes() == exported

    assert fit.main(["--model", "sft", *_sft(tmp_path, "--trainer.max_steps", "2")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-2:] == [
        (
            f"error: {tmp_path / 'adapter'} holds an earlier run's export; give another --model.export_dir, or pass "
            "--overwrite_export true to replace it"
        ),
        "(run again with --debug for the traceback)",
    ]
    assert weights.read_bytes() == exported
    fit.build_cli("sft", _sft(tmp_path, "--trainer.max_steps", "3", "--overwrite_export", "true"))
    assert weights.read_bytes() != exported  # asked for: replaced by the new run's adapter
