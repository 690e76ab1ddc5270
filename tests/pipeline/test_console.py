"""What a tiny ``cwpo run`` writes to the console: a few lines per stage on stderr, each once, no third-party bars,
tips or warnings (unless ``--verbose``); stdout ends with the results table and the report's path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = ["--seeds", "[0]", "--methods", "[human]", "--data.dataset", "{name: synthetic, args: {n_pairs: 240, n_test_pairs: 12}}",
        "--data.test_prompts", "12", "--annotator.trainer.max_epochs", "1", "--sft.trainer.max_epochs", "1",
        "--policy.trainer.max_epochs", "1", "--pretrain.texts", "64", "--eval.max_new_tokens", "6"]  # fmt: skip
NOISE = ("GPU available", "TPU available", "litlogger", "💡", "it/s]", "Warning", "warn", "Loading weights",
         "Writing model shards", "Setting accelerator", "Trainer(")  # fmt: skip


def _cwpo_run(tmp_path, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "cwpo.cli", "run", "--run_dir", "runs/tiny", *TINY, *extra],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines(), result.stderr.splitlines()


def test_a_tiny_run_writes_a_few_lines_each_once_and_ends_with_the_table_and_the_report_path(tmp_path):
    out, err = _cwpo_run(tmp_path)
    stages = 6  # pretrain, sft, generate, po, generate, heldout
    assert len(err) <= 4 * stages, "\n".join(err)  # was 26 (with warnings), and 138 lines on stdout
    assert not [line for line in err + out if any(noise in line for noise in NOISE)]
    messages = [line.split(" ", 1)[1] for line in err if line[:2].isdigit()]  # without the timestamp
    assert len(messages) == len(set(messages)), "a log line was repeated"
    assert len(out) <= 12, "\n".join(out)  # the results table, not the report with its YAML config
    assert out[0].startswith("## GRA (%)") and any(line.startswith("| Human |") for line in out)
    assert out[-1].endswith("report: runs/tiny/report/report.md") and (tmp_path / "runs/tiny/report/report.md").exists()


def test_verbose_shows_what_the_libraries_print(tmp_path):
    out, err = _cwpo_run(tmp_path, "--verbose", "--run_dir", "runs/verbose")  # the later --run_dir wins
    assert any("GPU available" in line for line in err)  # Lightning's own announcements, at every Trainer
    assert any(line.startswith("po/human/seed0 epoch 1/1") for line in err)  # a bar inside each training stage
    assert not any("epoch 1/1" in line for line in out)  # on stderr: stdout holds the results
    assert out[-1].endswith("report: runs/verbose/report/report.md")


def test_stage_progress_bars_show_on_a_terminal_and_with_verbose_only(tmp_path, monkeypatch):
    from cwpo.pipeline.experiment import Experiment
    from tests.pipeline.test_experiment import micro_config

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not Experiment(micro_config(tmp_path, ["human"])).bars
    config = micro_config(tmp_path, ["human"])
    config.verbose = True
    assert Experiment(config).bars
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert Experiment(micro_config(tmp_path, ["human"])).bars
