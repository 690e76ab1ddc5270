"""``cwpo evaluate``: a trained policy adapter against the SFT model it started from, by the pipeline's own stages
and report rows; the SFT model against itself ties on every prompt."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch  # noqa: F401  imported here, its log handler writes to the session's stderr, not a test's
import pytest

from cwpo import cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "reliability" / "configs"
DATA = "{name: synthetic, args: {n_pairs: 40, n_test_pairs: 8}}"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_log_streams")]


def test_evaluate_a_policy_adapter_against_its_sft_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sft, policy = tmp_path / "sft", tmp_path / "policy"
    assert (
        cli.main(
            [
                "fit",
                "--model",
                "sft",
                "--config",
                str(CONFIGS / "sft.yaml"),
                "--trainer.max_steps",
                "3",
                "--trainer.default_root_dir",
                str(tmp_path / "fit_sft"),
                "--model.export_dir",
                str(sft),
            ]
        )
        == 0
    )
    assert cli.main(["fit", "--model", "policy", "--config", str(CONFIGS / "policy.yaml"), "--trainer.max_steps", "3",
                     "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "fit_po"),
                     "--model.init_adapter", str(sft), "--model.export_dir", str(policy)]) == 0  # fmt: skip
    capsys.readouterr()

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(policy), "--data", DATA, "--test_prompts", "8", "--eval.max_new_tokens", "4",
            "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report' / 'report.md'}" in printed and "| policy |" in printed
    row = json.loads((out / "report" / "results.json").read_text())["rows"][0]
    assert row["method"] == "policy" and row["n"] == 8 and row["wins"] + row["ties"] + row["losses"] == 8
    assert {"gra", "mean_gold_reward", "sft_mean_gold_reward", "eos_rate", "mean_length"} <= set(row)
    assert row["heldout_pairs"] == 8 and 0.0 <= row["heldout_gold_accuracy"] <= 100.0

    # The SFT model against itself: the same answers, every prompt a tie; its implicit reward is 0 everywhere.
    same = tmp_path / "same"
    assert cli.main(["evaluate", "--model", str(sft), "--reference", str(sft), "--data", DATA, "--test_prompts", "8",
                     "--eval.max_new_tokens", "4", "--output", str(same), "--name", "sft"]) == 0  # fmt: skip
    capsys.readouterr()
    row = json.loads((same / "report" / "results.json").read_text())["rows"][0]
    assert (row["ties"], row["wins"], row["losses"]) == (8, 0, 0)
    assert row["heldout_gold_accuracy"] == 0.0  # ties count as wrong


def test_evaluate_errors(tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: {tmp_path / 'nope'} is not a folder; give an adapter folder exported by cwpo fit, or a model folder"
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert cli.main(["evaluate", "--model", str(model)]) == 2
    assert "is a full model: give --reference" in capsys.readouterr().err
