"""The ``cwpo.fit`` entry point: registry, ``--help``, argument splitting, and a full LightningCLI run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cwpo import fit


def test_split_model_arg_keeps_dotted_model_arguments():
    name, rest = fit.split_model_arg(["--model", "policy", "--model.beta", "0.5", "--config", "x.yaml"])
    assert name == "policy"
    assert rest == ["--model.beta", "0.5", "--config", "x.yaml"]
    name, rest = fit.split_model_arg(["--model=sft", "--trainer.max_steps", "3"])
    assert (name, rest) == ("sft", ["--trainer.max_steps", "3"])


def test_help_lists_every_registered_model():
    result = subprocess.run([sys.executable, "-m", "cwpo.fit", "--help"], capture_output=True, text=True, check=True)
    for name in ("annotator", "pairrm", "sft", "policy"):
        assert f"  {name}" in result.stdout
    assert set(fit.REGISTRY) >= {"annotator", "pairrm", "sft", "policy"}


def test_unknown_model_is_refused_with_the_registered_names(capsys):
    assert fit.main(["--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown --model 'nope'" in err and "policy" in err


@pytest.fixture
def toy_entry(monkeypatch):
    """A registered toy module, to test the CLI mechanism without the real modules."""
    monkeypatch.setitem(
        fit.REGISTRY,
        "toy",
        fit.Entry(
            "tests.toy_modules:ToyModule", "tests.toy_modules:ToyDataModule", "toy", (("model.width", "data.width"),)
        ),
    )


def test_registered_module_trains_through_lightningcli_and_saves_config(toy_entry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit.build_cli(
        "toy",
        [
            "--model.width",
            "3",
            "--trainer.max_steps",
            "4",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--seed_everything",
            "7",
        ],
    )
    # The link made the datamodule agree with the module.
    assert cli.datamodule.width == 3
    assert cli.trainer.global_step == 4
    run_dir = tmp_path / "runs" / "toy"
    version = run_dir / "lightning_logs" / "version_0"
    assert "width: 3" in (version / "config.yaml").read_text()
    assert (version / "checkpoints" / "last.ckpt").exists()
    assert "train/loss" in (version / "metrics.csv").read_text()
    # The logged loss fell: the mechanism really trained the module it was given.
    assert cli.model.losses[-1] < cli.model.losses[0]
