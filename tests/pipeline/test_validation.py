"""The whole experiment config is checked before the first stage runs: one error lists every problem, each by its
field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cwpo.errors import ConfigError
from cwpo.pipeline.config import (
    DataConfig,
    ExperimentConfig,
    PretrainConfig,
    StrongConfig,
    WeakConfig,
    validate,
)
from cwpo.pipeline.experiment import Experiment


def test_the_embedded_default_is_valid():
    validate(ExperimentConfig())


def test_one_error_lists_every_problem_by_its_field(tmp_path):
    missing = tmp_path / "runs" / "sft" / "model"
    config = ExperimentConfig(
        run_dir=str(tmp_path / "run"),
        methods=["cw-dpo", "cw-ppo"],
        data=DataConfig(split_ratio=1.5),
        weak=WeakConfig(lr=-1e-3, epochs=0),
        strong=StrongConfig(
            backbone=str(missing), pretrain=PretrainConfig(lr=0.0), beta=-0.1, tau=0.0, epsilon=0.5, po_lr=-5e-4
        ),  # fmt: skip
    )
    with pytest.raises(ConfigError) as caught:
        Experiment(config).run()
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0] == f"the experiment config has {len(lines) - 1} problem(s):"
    expected = {
        "methods": "unknown method 'cw-ppo'",
        "data.split_ratio": "must be in (0, 1), got 1.5",
        "weak.lr": "a learning rate must be > 0, got -0.001",
        "weak.epochs": "must be >= 1 epoch, got 0",
        "strong.po_lr": "a learning rate must be > 0, got -0.0005",
        "strong.pretrain.lr": "a learning rate must be > 0, got 0.0",
        "strong.beta": "DPO's beta must be > 0, got -0.1",
        "strong.tau": "IPO's tau must be > 0, got 0.0",
        "strong.epsilon": "rDPO's flip rate must be in [0, 0.5), got 0.5",
        "strong.backbone": f"model folder {missing} does not exist",
    }
    for field, text in expected.items():
        assert any(line.startswith(f"  {field}: ") and text in line for line in lines), (field, message)
    assert len(lines) - 1 == len(expected)
    assert not (tmp_path / "run").exists()  # no stage ran


def test_a_local_dataset_without_a_test_part(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a b", "chosen": "c", "rejected": "d"}) + "\n")
    config = ExperimentConfig(data=DataConfig(dataset=str(data)), strong=StrongConfig(pretrain=None))
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
    with pytest.raises(ConfigError, match=r"strong.pretrain: needs the synthetic dataset"):
        validate(config, data=False)


def test_a_synthetic_tokenizer_on_real_text_is_refused(tmp_path, hh_harmless_test_path):
    """HH-RLHF through the synthetic task's word-level tokenizer is mostly <unk>; so is the synthetic gold judge's
    view of it: refused before any training, with the share measured on a sample."""
    from cwpo.data import load_split

    rows = load_split({"name": "harmless-base", "path": str(hh_harmless_test_path)}, "test").select(range(60))
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    dataset = {"name": "local", "path": str(data), "test_fraction": 0.2, "args": {"allow_overlap": True}}
    config = ExperimentConfig(data=DataConfig(dataset=dataset), strong=StrongConfig(pretrain=None))
    with pytest.raises(ConfigError) as caught:
        validate(config)
    lines = str(caught.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["weak.backbone", "strong.backbone", "eval.judge"]
    rate = int(lines[0].split("maps ")[1].split(" %")[0])
    assert rate > 50 and "to <unk> (limit 5 %)" in lines[0]
    assert "synthetic gold judge knows only the synthetic task's words" in lines[2]
