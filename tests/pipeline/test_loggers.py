"""``cwpo run --logger csv|tensorboard|wandb``: one logger per training stage, named ``<stage>/<method>/seed<k>``
(W&B: one run per stage, one group per run folder, offline here); a ``--trainer.logger`` can no longer make every
stage write into one log."""

from __future__ import annotations

import pytest

from cwpo.errors import ConfigError
from cwpo.pipeline.experiment import Experiment, _trainer
from tests.pipeline.test_experiment import micro_config

TRAINING_STAGES = {"pretrain/strong/seed_all", "sft/human/seed0", "po/human/seed0"}


def _micro(tmp_path, logger):
    config = micro_config(tmp_path / "micro", ["human"])
    config.logger = logger
    config.eval.max_new_tokens = 4
    config.data.test_prompts = 4
    return config


@pytest.mark.slow
def test_tensorboard_gets_one_run_per_training_stage_named_stage_method_seed(tmp_path):
    pytest.importorskip("tensorboard")
    Experiment(_micro(tmp_path, "tensorboard")).run()
    root = tmp_path / "micro" / "tensorboard"
    runs = {str(p.parent.relative_to(root)) for p in root.rglob("events.out.tfevents.*")}
    assert runs == TRAINING_STAGES


@pytest.mark.slow
def test_wandb_gets_one_offline_run_per_stage_in_one_group(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    Experiment(_micro(tmp_path, "wandb")).run()
    runs = sorted((tmp_path / "micro" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == len(TRAINING_STAGES)  # each stage its own run, none shared
    records = [path.read_bytes() for path in runs]
    for name in TRAINING_STAGES:  # the run's display name and group are in its record
        assert sum(name.encode() in data for data in records) == 1, name
    assert all(b"micro" in data for data in records)  # the group: the run folder's name


def test_a_trainer_logger_override_is_refused_before_any_stage_runs(tmp_path):
    config = micro_config(tmp_path, ["human"])
    config.trainer = {"logger": "TensorBoardLogger"}
    with pytest.raises(
        ConfigError, match="trainer.logger: one logger shared by every stage; choose the kind with --logger"
    ):
        Experiment(config)
    assert not (tmp_path / "pretrain").exists()


def test_trainer_logger_false_turns_logging_off_and_none_logs_nothing(tmp_path):
    assert _trainer(tmp_path, {"max_epochs": 1, "logger": False}).logger is None
    experiment = Experiment(micro_config(tmp_path, ["human"]))
    experiment.config.logger = "none"
    assert experiment._logger(tmp_path, "po", "human", 0) is False


def test_a_logger_without_its_package_or_unknown_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    config = micro_config(tmp_path, ["human"])
    config.logger = "wandb"
    with pytest.raises(ConfigError, match=r"logger: wandb needs the wandb package: pip install 'cwpo\[wandb\]'"):
        Experiment(config)
    config.logger = "mlflow"
    with pytest.raises(ConfigError, match="logger: must be one of csv, tensorboard, wandb, none"):
        Experiment(config)


def test_cwpo_run_takes_logger_on_the_command_line():
    from cwpo.run import load_config

    config, _ = load_config(["--logger", "tensorboard", "--seeds", "[0]"])
    assert config.logger == "tensorboard"
