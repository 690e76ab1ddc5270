"""Determinism: the same config and seeds give the same run twice on CPU, bit for bit; each seed changes what it
seeds.

The seeds of a ``python -m cwpo.fit`` run and what each one reaches:

- ``seed_everything``: the global RNGs, i.e. dropout (LoRA's ``lora_dropout``) and fresh heads of pretrained models;
- ``data.seed``: the training order (``LengthGroupedSampler``: the shuffle and the length groups, per epoch);
- ``data.split_seed``: the D_L / D_U split and the validation holdout;
- ``model.backbone.seed``: a random initialisation (``from_scratch``) and the LoRA adapter's init;
- the synthetic task's own ``seed`` (``dataset.args.seed``) and generation's ``GenerationConfig.seed`` are tested
  with their code (``tests/data/test_synthetic.py``, ``tests/evaluation/test_generate.py``); that ``cwpo run``'s one
  experiment seed reaches every one of these is checked in ``test_resume.py`` (the pipeline test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reliability.conftest import fit_args, fit_in_process, read_steps

ONE_EPOCH = ["--trainer.max_epochs", "1"]  # 10 steps and one validation


def _run(model: str, root: Path, *extra: str):
    cli = fit_in_process(model, fit_args(model, root, extra=[*ONE_EPOCH, *extra]))
    steps = [{k: v for k, v in r.items() if k != "pid"} for r in read_steps(root / "steps.jsonl")]
    metrics = (root / "logs" / "version_0" / "metrics.csv").read_text()
    return cli.model.state_dict(), steps, metrics


def _differs(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["annotator", "policy"])
def test_same_config_and_seed_give_identical_weights_and_metrics(model, tmp_path):
    weights_1, steps_1, metrics_1 = _run(model, tmp_path / "first")
    weights_2, steps_2, metrics_2 = _run(model, tmp_path / "second")
    assert weights_1.keys() == weights_2.keys() and not _differs(weights_1, weights_2)
    assert steps_1 == steps_2 and len(steps_1) == 10
    assert metrics_1 == metrics_2  # every logged value, train and validation, byte for byte
    assert "val/loss" in metrics_1 and ("val/accuracy" in metrics_1 or "val/rewards/accuracies" in metrics_1)


@pytest.mark.slow
def test_data_and_init_seeds_change_the_annotator(tmp_path):
    base_weights, base_steps, _ = _run("annotator", tmp_path / "base")
    order_weights, order_steps, _ = _run("annotator", tmp_path / "order", "--data.seed", "1")
    assert [r["rows"] for r in order_steps] != [r["rows"] for r in base_steps]
    assert sorted(i for r in order_steps for i in r["rows"]) == sorted(i for r in base_steps for i in r["rows"])
    assert _differs(order_weights, base_weights)

    init_weights, init_steps, _ = _run("annotator", tmp_path / "init", "--model.backbone.seed", "1")
    assert [r["rows"] for r in init_steps] == [r["rows"] for r in base_steps]  # same order, other initial weights
    assert init_steps[0]["loss"] != base_steps[0]["loss"]
    assert _differs(init_weights, base_weights)


@pytest.mark.slow
def test_global_seed_changes_dropout_and_nothing_else(tmp_path):
    """``seed_everything`` reaches LoRA dropout: the same batches and initial weights, other dropout masks."""
    base_weights, base_steps, _ = _run("policy", tmp_path / "base")
    other_weights, other_steps, _ = _run("policy", tmp_path / "other", "--seed_everything", "1")
    assert [r["rows"] for r in other_steps] == [r["rows"] for r in base_steps]
    assert [r["loss"] for r in other_steps] != [r["loss"] for r in base_steps]
    assert _differs(other_weights, base_weights)
    frozen = [name for name in base_weights if "lora_" not in name]
    assert frozen and not _differs({n: other_weights[n] for n in frozen}, {n: base_weights[n] for n in frozen})


def test_split_seed_changes_the_labelled_split_and_only_it():
    from cwpo.data import PairDataModule

    def ids(split_seed: int, part: str) -> list[str]:
        data = PairDataModule(dataset={"name": "synthetic", "args": {"n_pairs": 60}}, tokenizer="synthetic",
                              part=part, split_seed=split_seed, max_length=64)  # fmt: skip
        data.setup("fit")
        return list(data.train_dataset["id"])

    assert ids(0, "d_l") == ids(0, "d_l")
    assert set(ids(0, "d_l")) != set(ids(1, "d_l"))
    assert set(ids(1, "d_l")) | set(ids(1, "d_u")) == set(ids(0, "d_l")) | set(ids(0, "d_u")) == set(ids(0, "train"))
