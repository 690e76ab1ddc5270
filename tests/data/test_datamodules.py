"""LightningDataModules: pair, SFT and prompt batches from the synthetic task and from an annotated file."""

from __future__ import annotations

import json

import pytest
import torch

from cwpo.data import PairDataModule, PromptDataModule, SFTDataModule, load_synthetic, save_pairs
from cwpo.errors import ConfigError


def test_pair_datamodule_on_synthetic_d_l():
    dm = PairDataModule(dataset={"name": "synthetic", "args": {"n_pairs": 400}}, tokenizer="synthetic", part="d_l",
                        val_part="holdout", val_fraction=0.25, max_length=48, batch_size=8)  # fmt: skip
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (90, 30)  # 0.3 * 400 = 120, a quarter held out
    assert not set(dm.train_dataset["id"]) & set(dm.val_dataset["id"])
    batch = next(iter(dm.train_dataloader()))
    b, width = 8, batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2 * b, width)
    assert torch.equal(batch["weights"], torch.ones(b)) and torch.equal(batch["human_label"], torch.ones(b).long())
    # rows i and b + i are the same pair: same prompt tokens, then chosen vs rejected
    first = dm.train_dataset[int(batch["index"][0])]
    n_prompt = len(first["prompt_ids"])
    assert batch["input_ids"][0, :n_prompt].tolist() == first["prompt_ids"]
    assert batch["input_ids"][b, :n_prompt].tolist() == first["prompt_ids"]
    assert batch["labels"][0][batch["labels"][0] != -100].tolist() == first["chosen_ids"]
    assert batch["labels"][b][batch["labels"][b] != -100].tolist() == first["rejected_ids"]
    # deterministic under the seed; a new epoch reorders
    again = PairDataModule(dataset={"name": "synthetic", "args": {"n_pairs": 400}}, tokenizer="synthetic", part="d_l",
                           val_part="holdout", val_fraction=0.25, max_length=48, batch_size=8)  # fmt: skip
    again.setup("fit")
    assert torch.equal(next(iter(again.train_dataloader()))["index"], batch["index"])
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))["index"], batch["index"])
    predict = next(iter(dm.predict_dataloader()))
    assert predict["index"].tolist() == list(range(8))
    assert next(iter(dm.val_dataloader()))["input_ids"].shape[0] == 16
    report = dm.filter_report
    assert report.n_kept == 90 and report.notes["split_off_d_l"] == 280 and report.notes["split_off_holdout"] == 30


def test_annotated_file_gives_confidence_weights_and_ref_logps(tmp_path):
    data = load_synthetic(12).add_column("confidence", [0.5] * 6 + [0.25] * 6)
    path = save_pairs(data, tmp_path / "d_u_annotated.jsonl")
    dm = PairDataModule(dataset=str(path), tokenizer="synthetic", part="all", max_length=48, batch_size=4,
                        group_by_length=False)  # fmt: skip
    dm.setup()
    batch = next(iter(dm.predict_dataloader()))
    assert batch["weights"].tolist() == [0.5, 0.5, 0.5, 0.5]
    dm.attach_ref_logps(torch.arange(12.0), -torch.arange(12.0))
    batch = next(iter(dm.predict_dataloader()))
    assert batch["ref_chosen_logps"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert batch["ref_rejected_logps"].tolist() == [0.0, -1.0, -2.0, -3.0]
    with pytest.raises(ConfigError, match="has 3 values for 12"):
        dm.attach_ref_logps([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])


def test_sft_and_prompt_datamodules():
    sft = SFTDataModule(dataset="synthetic", tokenizer="synthetic", part="d_u", max_length=48, batch_size=4, limit=40)
    sft.setup()
    batch = next(iter(sft.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"} and batch["input_ids"].shape[0] == 4
    prompts = PromptDataModule(dataset="synthetic", tokenizer="synthetic", max_length=48, batch_size=4)
    prompts.setup()
    assert len(prompts.train_dataset) == 200  # the test part: 200 prompts
    batch = next(iter(prompts.predict_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "index"}
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padded: every prompt ends at the last column
    assert batch["input_ids"][batch["attention_mask"] == 0].eq(prompts.tokenizer.pad_token_id).all()


def test_label_flips_and_cache(tmp_path):
    dm = PairDataModule(dataset={"name": "synthetic", "args": {"n_pairs": 400}}, tokenizer="synthetic", part="d_l",
                        max_length=48, label_flip_rate=0.1, cache_dir=str(tmp_path))  # fmt: skip
    dm.prepare_data()
    dm.setup()
    assert sum(dm.train_dataset["label_flipped"]) == 12
    assert len(list(tmp_path.glob("tokenized-*"))) == 1


def test_cli_style_arguments(tmp_path):
    """jsonargparse (LightningCLI's parser) builds the modules from YAML-like values."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PairDataModule, "data")
    config = parser.parse_object({"data": {
        "dataset": {"name": "synthetic", "args": {"n_pairs": 100}},
        "tokenizer": {"name_or_path": "synthetic", "from_scratch": True, "config": {"model_type": "llama"}},
        "part": "d_u", "max_length": 48, "batch_size": 2,
    }})  # fmt: skip
    dm = parser.instantiate(config).data
    dm.setup()
    assert len(dm.train_dataset) == 70 and dm.batch_size == 2
    # LightningCLI links the module's ModelSpec backbone to the datamodule's tokenizer
    from cwpo.models import ModelSpec

    class Module:
        def __init__(self, backbone: ModelSpec):
            self.backbone = backbone

    linked = ArgumentParser(exit_on_error=False)
    linked.add_class_arguments(Module, "model")
    linked.add_class_arguments(SFTDataModule, "data")
    linked.link_arguments("model.backbone", "data.tokenizer")
    linked_config = linked.parse_object({
        "model": {"backbone": {"name_or_path": "synthetic", "from_scratch": True, "config": {"model_type": "llama"}}},
        "data": {"dataset": "synthetic"},
    })  # fmt: skip
    linked_dm = linked.instantiate(linked_config).data
    assert isinstance(linked_dm.tokenizer_spec, ModelSpec) and linked_dm.tokenizer.eos_token == "</s>"
    prompt_parser = ArgumentParser(exit_on_error=False)
    prompt_parser.add_class_arguments(PromptDataModule, "data")
    prompt_config = prompt_parser.parse_object({"data": {"dataset": "synthetic", "tokenizer": "synthetic",
                                                         "batch_size": 3}})  # fmt: skip
    assert prompt_parser.instantiate(prompt_config).data.batch_size == 3


def test_bad_arguments():
    with pytest.raises(ConfigError, match="part must be one of"):
        PairDataModule(dataset="synthetic", tokenizer="synthetic", part="unlabelled")
    with pytest.raises(ConfigError, match="val_part"):
        PairDataModule(dataset="synthetic", tokenizer="synthetic", val_part="dev")
    dm = PairDataModule(dataset={"name": "synthetic", "args": {"n_pairs": 20}}, tokenizer="synthetic")
    with pytest.raises(ConfigError, match="call setup"):
        dm.train_dataloader()
    dm.setup()
    assert dm.val_dataloader() == []  # val_part None: no validation (Lightning skips a loop with no loaders)


def test_hparams_are_recorded():
    dm = PairDataModule(dataset="synthetic", tokenizer="synthetic", part="d_u", max_length=64)
    assert dm.hparams["part"] == "d_u" and dm.hparams["max_length"] == 64 and dm.hparams["tokenizer"] == "synthetic"
    assert json.dumps({k: v for k, v in dm.hparams.items() if k != "dataset"})
