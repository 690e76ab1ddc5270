"""One CLI: ``cwpo fit | annotate | run | export``, each reached from ``cwpo``; a user error prints ``error: ...``
and a hint on stderr and exits 2 (``--debug``: the traceback); ``--trainer.default_root_dir`` holds ``cwpo fit``'s
logs and checkpoints; ``--print_config`` output round-trips as ``--config``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  imported here, its log handler writes to the session's stderr, not a test's
import pytest

from cwpo import cli

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "configs" / "policy" / "synthetic.yaml"
SFT = REPO / "tests" / "reliability" / "configs" / "sft.yaml"
HINT = "(run again with --debug for the traceback)"
pytestmark = pytest.mark.usefixtures("fresh_log_streams")


def _error(capsys, argv: list[str]) -> list[str]:
    """Run ``cwpo <argv>``; it must exit 2 with no traceback: return the lines of stderr."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()


def test_every_command_is_reached_from_cwpo(capsys):
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    for command in ("fit", "annotate", "run", "export"):
        assert f"  {command} " in listed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model.optim.lr", "-1"], "error: OptimConfig.lr must be > 0, got -1.0"),
        (["--model.objective", "rdpo", "--model.epsilon", "0.5"],
         "error: epsilon must be a number with 0 <= epsilon < 0.5, got 0.5"),
        (["--data.split_ratio", "1.5"], "error: the D_L ratio must be in (0, 1), got 1.5"),
        (["--model.backbone.name_or_path", "runs/nope/model"],
         "error: model folder runs/nope/model does not exist; give an existing folder, package:<name>, or a hub name "
         "such as org/model"),
    ],
)  # fmt: skip
def test_cwpo_fit_bad_values_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    lines = _error(capsys, ["fit", "--model", "policy", "--config", str(POLICY), "--trainer.fast_dev_run", "true",
                            *flags])  # fmt: skip
    assert lines[-2:] == [message, HINT]


def test_a_bad_argument_is_one_line_not_the_usage_text(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _error(capsys, ["run", "--policy.model.beta", "abc"]) == [
        "error: Parser key \"policy.model.beta\": Expected a <class 'float'>. Got value: abc ('cwpo run --help' lists the "
        "arguments)", HINT]  # fmt: skip
    assert _error(capsys, ["fit", "--model", "policy", "--config", str(POLICY), "--nope", "1"]) == [
        "error: unrecognized arguments: --nope 1 ('cwpo fit --model policy --help' lists the arguments)",
        HINT,
    ]
    import torch

    ckpt = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {"beta": "not a number"}}, ckpt)
    lines = _error(capsys, ["fit", "--model", "policy", "--config", str(POLICY), "--ckpt_path", str(ckpt)])
    assert (
        lines[-2].startswith(f"error: {ckpt}: its hyper-parameters do not fit --model policy (") and lines[-1] == HINT
    )


def test_cwpo_run_lists_every_bad_value_before_any_stage(capsys, tmp_path):
    run_dir = tmp_path / "run"
    lines = _error(capsys, ["run", "--run_dir", str(run_dir), "--methods", "[cw-dpo,cw-ppo]", "--policy.model.optim.lr",
                            "-1", "--policy.model.epsilon", "0.5", "--data.split_ratio", "1.5", "--sft.model.backbone",
                            "runs/nope/model"])  # fmt: skip
    assert lines[0] == "error: the experiment config has 5 problem(s):" and lines[-1] == HINT
    problems = [line.strip().split(":")[0] for line in lines[1:-1]]
    assert problems == ["policy.model.optim", "methods", "data.split_ratio", "policy.model.epsilon",
                        "sft.model.backbone"]  # fmt: skip
    assert "OptimConfig.lr must be > 0, got -1.0" in lines[1] and "unknown method 'cw-ppo'" in lines[2]
    assert "model folder runs/nope/model does not exist" in lines[5]
    assert not run_dir.exists()


def test_cwpo_annotate_and_export_user_errors_exit_2(capsys, tmp_path):
    lines = _error(capsys, ["annotate", "--annotator", str(tmp_path / "nope"), "--data", "synthetic", "--output",
                            str(tmp_path / "out.jsonl"), "--split_ratio", "0.3"])  # fmt: skip
    assert lines == [f"error: no annotator at {tmp_path / 'nope'}: expected a Lightning .ckpt or a folder from "
                     "export_annotator()", HINT]  # fmt: skip
    lines = _error(capsys, ["export", "merge", str(tmp_path / "nope"), str(tmp_path / "merged")])
    assert len(lines) == 2 and lines[0].startswith(f"error: {tmp_path / 'nope'}") and lines[1] == HINT
    lines = _error(capsys, ["annotate", "--annotator", "a.ckpt", "--data", "synthetic", "--output", "o.jsonl",
                            "--batch_size", "many"])  # fmt: skip
    assert lines == ["error: Parser key \"batch_size\": Expected a <class 'int'>. Got value: many ('cwpo annotate "
                     "--help' lists the arguments)", HINT]  # fmt: skip
    lines = _error(capsys, ["export", "dataset", str(tmp_path / "pairs.jsonl")])
    assert lines == ["error: dataset: give --out_dir FOLDER, --push_to_hub REPO_ID, or both", HINT]


def test_debug_shows_the_traceback(tmp_path):
    """The console script's process (without --debug it is the two lines above, in-process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "cwpo.cli", "annotate", "--annotator", str(tmp_path / "nope"), "--data",
            "synthetic", "--output", str(tmp_path / "out.jsonl"), "--debug"]  # fmt: skip
    debug = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("cwpo.errors.ConfigError: no annotator at")


def test_default_root_dir_holds_the_logs_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "elsewhere"
    assert cli.main(["fit", "--model", "sft", "--config", str(SFT), "--trainer.default_root_dir", str(root),
                     "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--model.export_dir",
                     str(root / "adapter")]) == 0  # fmt: skip
    version = root / "lightning_logs" / "version_0"
    assert (version / "metrics.csv").exists() and (version / "checkpoints" / "last.ckpt").exists()
    assert (root / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "runs").exists()


def _printed(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--print_config"])
    assert caught.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "shown"),
    [(["fit", "--model", "policy", "--config", str(POLICY), "--model.beta", "0.2"], ["beta: 0.2"]),
     (["run", "--seeds", "[3]", "--policy.model.beta", "0.2"], ["beta: 0.2"]),
     (["evaluate", "--model", "runs/policy/adapter", "--eval.max_new_tokens", "7"], ["  max_new_tokens: 7"]),
     # annotate's flags of its argparse days (dashed, --no-X) still read, as the one style's values
     (["annotate", "--annotator", "a.ckpt", "--data", "{name: local, path: x.jsonl}", "--output", "o.jsonl",
       "--split-ratio", "0.4", "--no-resume", "--min_prompt_tokens", "16"],
      ["split_ratio: 0.4", "resume: false", "min_prompt_tokens: 16", "data:\n  name: local\n  path: x.jsonl"])],
)  # fmt: skip
def test_print_config_round_trips_as_config(capsys, tmp_path, argv, shown):
    text = _printed(capsys, argv)
    assert all(line in text for line in shown), text
    saved = tmp_path / "printed.yaml"
    saved.write_text(text)
    again = _printed(capsys, [*argv[: 3 if argv[0] == "fit" else 1], "--config", str(saved)])
    assert again == text
    if argv[0] == "run":
        import dataclasses

        from cwpo.pipeline.config import ExperimentConfig, PolicyModel, PolicyStage
        from cwpo.run import load_config

        config, _ = load_config(["--config", str(saved)])
        policy = PolicyStage(model=dataclasses.replace(PolicyModel(), beta=0.2))
        assert config == ExperimentConfig(seeds=[3], policy=policy)
