"""The whole experiment config is checked before the first stage runs: one error lists every problem, each by its
field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cwpo.errors import ConfigError
from cwpo.pipeline.config import DataConfig, ExperimentConfig, experiment_config, validate
from cwpo.pipeline.experiment import Experiment


def test_the_embedded_default_is_valid():
    validate(ExperimentConfig())


def test_one_error_lists_every_problem_by_its_field(tmp_path):
    missing = tmp_path / "runs" / "sft" / "model"
    values = {
        "run_dir": str(tmp_path / "run"),
        "methods": ["cw-dpo", "cw-ppo"],
        "data": {"split_ratio": 1.5},
        "annotator": {"model": {"optim": {"lr": -1e-3}}, "trainer": {"max_epochs": 0}},
        "pretrain": {"model": {"optim": {"lr": 0.0}}},
        "sft": {"model": {"backbone": str(missing)}, "trainer": {"accumulate_grad_batches": 2}},
        "policy": {"model": {"beta": -0.1, "tau": 0.0, "epsilon": 0.5, "optim": {"lr": -5e-4},
                             "reference": "nope"}},
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        Experiment(experiment_config(values)).run()
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0] == f"the experiment config has {len(lines) - 1} problem(s):"
    expected = {
        "methods": "unknown method 'cw-ppo'",
        "data.split_ratio": "must be in (0, 1), got 1.5",
        "annotator.model.optim": "OptimConfig.lr must be > 0, got -0.001",
        "annotator.trainer.max_epochs": "an integer >= 1, got 0",
        "sft.trainer.max_epochs": "must give its epochs, an integer >= 1, got None",
        "policy.model.optim": "OptimConfig.lr must be > 0, got -0.0005",
        "pretrain.model.optim": "OptimConfig.lr must be > 0, got 0.0",
        "policy.model.beta": "DPO's beta must be > 0, got -0.1",
        "policy.model.tau": "IPO's tau must be > 0, got 0.0",
        "policy.model.epsilon": "rDPO's flip rate must be in [0, 0.5), got 0.5",
        "policy.model": "reference must be one of",  # the module's own check of its arguments
        "sft.model.backbone": f"model folder {missing} does not exist",
    }
    for field, text in expected.items():
        assert any(line.startswith(f"  {field}: ") and text in line for line in lines), (field, message)
    assert len(lines) - 1 == len(expected)
    assert not (tmp_path / "run").exists()  # no stage ran


def test_a_local_dataset_without_a_test_part(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a b", "chosen": "c", "rejected": "d"}) + "\n")
    config = ExperimentConfig(data=DataConfig(dataset=str(data)), pretrain=None)
    with pytest.raises(ConfigError, match=r"data\.dataset: .*pairs.jsonl has no test part .*test_fraction"):
        validate(config)
    missing = dataclasses.replace(config, data=DataConfig(dataset={"name": "local", "path": str(tmp_path / "no.jsonl"),
                                                                  "test_fraction": 0.1}))  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.dataset: path .*no.jsonl does not exist"):
        validate(missing)


def test_pretraining_needs_the_synthetic_data(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a b", "chosen": "c", "rejected": "d"}) + "\n")
    config = ExperimentConfig(data=DataConfig(dataset={"name": "local", "path": str(data), "test_fraction": 0.5}))
    with pytest.raises(ConfigError, match=r"pretrain: needs the synthetic dataset"):
        validate(config, data=False)


def test_a_synthetic_tokenizer_on_real_text_is_refused(tmp_path, hh_harmless_test_path):
    """HH-RLHF through the synthetic task's word-level tokenizer is mostly <unk>; so is the synthetic gold judge's
    view of it: refused before any training, with the share measured on a sample."""
    from cwpo.data import load_split

    rows = load_split({"name": "harmless-base", "path": str(hh_harmless_test_path)}, "test").select(range(60))
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    dataset = {"name": "local", "path": str(data), "test_fraction": 0.2, "args": {"allow_overlap": True}}
    config = ExperimentConfig(data=DataConfig(dataset=dataset), pretrain=None)
    with pytest.raises(ConfigError) as caught:
        validate(config)
    lines = str(caught.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "annotator.model.backbone",
        "sft.model.backbone",
        "eval.judge",
    ]
    rate = int(lines[0].split("maps ")[1].split(" %")[0])
    assert rate > 50 and "to <unk> (limit 5 %)" in lines[0]
    assert "synthetic gold judge knows only the synthetic task's words" in lines[2]
