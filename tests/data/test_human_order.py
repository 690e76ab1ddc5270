"""Pairs whose ``human_label`` is 0 (the human preferred ``rejected``) reach every consumer in human order.

The fixture writes one set of synthetic pairs twice: as loaders write it (human order, ``human_label = 1``) and with
every other pair swapped and marked ``human_label = 0``, as a user's file may hold it. Every consumer must see the
second file exactly as the first: the SFT and policy datamodules (``python -m cwpo.fit --model sft|policy``), the
pipeline's ``human`` method and its WS-DPO stages (the weak policy trained on D_L). Online CW-DPO reads only the
prompts of a file (its pairs are sampled and labelled by the annotator), which the order cannot change.
"""

from __future__ import annotations

import json

import pytest

from cwpo.data import get_filter_report, load_local, load_synthetic, save_pairs
from cwpo.data.schema import swap_pair


def _as_user_file(records: list[dict], path):
    rows = []
    for i, record in enumerate(records):
        rows.append({**swap_pair(record), "human_label": 0} if i % 2 else record)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``{"human": (train, test), "user": (train, test)}``: the same pairs, in human order and half swapped."""
    root = tmp_path_factory.mktemp("human-order")
    for split, n in (("train", 40), ("test", 8)):
        pairs = load_synthetic(n_pairs=40, split=split, n_test_pairs=8)
        pairs = pairs.remove_columns([c for c in pairs.column_names if c.startswith("gold_reward")])
        save_pairs(pairs.select(range(n)), root / f"human-{split}.jsonl")
        _as_user_file(list(pairs.select(range(n))), root / f"user-{split}.jsonl")
    return {kind: (root / f"{kind}-train.jsonl", root / f"{kind}-test.jsonl") for kind in ("human", "user")}


def _pairs(dataset) -> list[tuple]:
    return [(r["id"], r["prompt"], r["chosen"], r["rejected"], r.get("human_label")) for r in dataset]


def test_the_loader_puts_human_label_0_rows_in_human_order_and_counts_them(files):
    human, user = load_local(files["human"][0]), load_local(files["user"][0])
    assert _pairs(user) == _pairs(human) and set(user["human_label"]) == {1}
    assert get_filter_report(user).notes == {"put_in_human_order": 20}


def test_an_annotated_row_keeps_the_weak_order(tmp_path):
    """Weak scores mean the pair is in the annotator's order and ``human_label`` is agreement: left as it is."""
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "human_label": 0, "weak_score_chosen": 2.0,
           "weak_score_rejected": 1.0, "confidence": 0.4, "agrees_with_human": False}  # fmt: skip
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps(row) + "\n")
    loaded = load_local(path)[0]
    assert (loaded["chosen"], loaded["human_label"]) == ("a", 0)
    assert get_filter_report(load_local(path)).notes == {}


def _batches(cls_name: str, dataset) -> list[dict]:
    from cwpo.data import datamodules

    module = getattr(datamodules, cls_name)(dataset=dataset, tokenizer="synthetic", part="train", max_length=64,
                                            batch_size=4)  # fmt: skip
    module.setup()
    return list(module.train_dataloader())


@pytest.mark.parametrize("consumer", ["SFTDataModule", "PairDataModule"])  # --model sft; --model policy/annotator
def test_fit_datamodules_train_on_the_human_order(consumer, files):
    def spec(kind):
        return {"name": "local", "path": str(files[kind][0]), "test_path": str(files[kind][1])}

    expected, served = _batches(consumer, spec("human")), _batches(consumer, spec("user"))
    assert len(served) == len(expected) == 10
    for got, want in zip(served, expected, strict=True):
        assert got.keys() == want.keys()
        assert all(got[k].equal(want[k]) for k in want)


def test_the_prompts_of_online_cw_dpo_do_not_depend_on_the_order(files):
    from cwpo.data.datamodules import PromptDataModule

    def prompts(kind):
        module = PromptDataModule(dataset={"name": "local", "path": str(files[kind][0])}, tokenizer="synthetic",
                                  part="all", max_length=64, batch_size=4)  # fmt: skip
        module.setup()
        return [batch["input_ids"].tolist() for batch in module.predict_dataloader()]

    assert prompts("user") == prompts("human")


@pytest.mark.slow
def test_the_pipeline_human_method_and_ws_dpo_train_on_the_human_order(files, tmp_path, monkeypatch):
    """``cwpo run``: the SFT of the ``human`` method (D_U) and WS-DPO's SFT and DPO (D_L) read the user's file; every
    pair their datamodules serve is in human order."""
    from cwpo.data.datamodules import PreferenceDataModule
    from cwpo.pipeline.config import experiment_config
    from cwpo.pipeline.experiment import Experiment

    human = {(r["prompt"], r["chosen"], r["rejected"]) for r in load_local(files["human"][0])}
    served: list[tuple] = []
    load_records = PreferenceDataModule.load_records

    def recording(self):
        train, val = load_records(self)
        served.extend((r["prompt"], r["chosen"], r["rejected"]) for r in train)
        return train, val

    monkeypatch.setattr(PreferenceDataModule, "load_records", recording)
    dataset = {"name": "local", "path": str(files["user"][0]), "test_path": str(files["user"][1])}
    small = {"data": {"batch_size": 8}, "trainer": {"max_epochs": 1}}
    config = experiment_config({
        "name": "human order", "run_dir": str(tmp_path), "seeds": [0], "methods": ["human", "ws-dpo"],
        "data": {"dataset": dataset, "max_length": 64, "test_prompts": 4},
        **{stage: small for stage in ("annotator", "ws_sft", "ws_policy", "sft", "policy")},
        "pretrain": None,  # no pretraining on a local file
        "eval": {"max_new_tokens": 4},
    })  # fmt: skip
    experiment = Experiment(config)
    experiment.sft(0, "human", experiment._labels("human", 0, None, None))
    n_d_u = len(served)
    experiment.ws_labels(0)
    assert n_d_u == 28 and len(served) > n_d_u  # D_U (70 % of 40), then WS-DPO's D_L (SFT, DPO, labelling)
    assert served and set(served) <= human
