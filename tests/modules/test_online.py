"""OnlinePolicyModule (online CW-DPO, appendix J.5): on-policy pairs ordered and weighted by the weak annotator."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from cwpo.annotation.loading import export_annotator
from cwpo.data import PromptDataModule
from cwpo.errors import ConfigError
from cwpo.models import LoraSpec
from cwpo.modules.annotator import AnnotatorModule
from cwpo.modules.online import OnlinePolicyModule, annotator_scores, annotator_tokenizer
from cwpo.modules.optim import OptimConfig
from tests.tiny import tiny_spec


@pytest.fixture(scope="module")
def annotator_dir(tmp_path_factory):
    """A randomly initialised annotator, exported as `annotate` and the pipeline read it."""
    module = AnnotatorModule(tiny_spec(seed=7))
    module.configure_model()
    return str(export_annotator(module, tmp_path_factory.mktemp("online") / "annotator"))


def prompts_data(batch_size: int = 4) -> PromptDataModule:
    data = PromptDataModule(dataset={"name": "synthetic", "args": {"n_pairs": 60}}, tokenizer="synthetic", part="d_u",
                            max_length=48, batch_size=batch_size)  # fmt: skip
    data.setup()
    return data


def make(annotator_dir, **kwargs) -> OnlinePolicyModule:
    kwargs.setdefault("lora", LoraSpec(dropout=0.0))
    kwargs.setdefault("max_new_tokens", 6)
    kwargs.setdefault("annotator_max_length", 64)
    module = OnlinePolicyModule(tiny_spec(), annotator_dir, **kwargs)
    module.configure_model()
    return module


def ready_to_sample(annotator_dir, **kwargs) -> tuple[OnlinePolicyModule, dict[str, torch.Tensor]]:
    """A module that knows the prompts' text, and the first prompt batch of :func:`prompts_data`."""
    data = prompts_data()
    module = make(annotator_dir, **kwargs)
    module.set_prompts(data.train_dataset["prompt"])
    return module, next(iter(data.train_dataloader()))


def test_sampled_pairs_are_ordered_and_weighted_by_the_annotator(annotator_dir):
    module, batch = ready_to_sample(annotator_dir, temperature=2.0)
    pairs, sampled = module.sample_pairs(batch)
    b = batch["input_ids"].shape[0]
    assert pairs["input_ids"].shape[0] == 2 * b and pairs["weights"].shape == (b,)

    # The annotator, asked again about (chosen, rejected), prefers chosen; c = 2σ(|Δ|) - 1 of that margin.
    scorer = annotator_tokenizer(module.annotator, max_length=64)
    s_chosen, s_rejected = annotator_scores(module.annotator, scorer, sampled["prompts"], sampled["chosen"],
                                            sampled["rejected"])  # fmt: skip
    margin = (s_chosen - s_rejected).masked_fill(sampled["identical"], 0.0)
    assert (margin >= -1e-6).all()
    torch.testing.assert_close(pairs["weights"], 2 * torch.sigmoid(margin.abs()) - 1, atol=1e-5, rtol=1e-5)
    assert not sampled["identical"].all(), "temperature 2 on a random model should give different samples"

    # Each row is the prompt's real tokens then a response; labels cover the response only.
    for row in range(2 * b):
        prompt = batch["input_ids"][row % b][batch["attention_mask"][row % b].bool()]
        n = prompt.shape[0]
        assert torch.equal(pairs["input_ids"][row, :n], prompt)
        assert (pairs["labels"][row, :n] == -100).all()
        length = int(pairs["attention_mask"][row].sum())
        assert 1 <= length - n <= 6
        assert torch.equal(pairs["labels"][row, n:length], pairs["input_ids"][row, n:length])
        assert (pairs["labels"][row, length:] == -100).all()


def test_sampling_is_seeded_by_epoch_and_prompt(annotator_dir):
    module, batch = ready_to_sample(annotator_dir, temperature=1.5)
    _, first = module.sample_pairs(batch)
    _, again = module.sample_pairs(batch)
    assert first["chosen"] == again["chosen"] and first["rejected"] == again["rejected"]
    other, _ = ready_to_sample(annotator_dir, temperature=1.5, sample_seed=1)
    _, moved = other.sample_pairs(batch)
    assert (moved["chosen"], moved["rejected"]) != (first["chosen"], first["rejected"])


def test_fit_trains_only_lora_and_leaves_the_annotator_alone(annotator_dir, tmp_path):
    L.seed_everything(0)
    module = OnlinePolicyModule(tiny_spec(), annotator_dir, lora=LoraSpec(dropout=0.0), max_new_tokens=6,
                                annotator_max_length=64, temperature=1.5, beta=0.5,
                                optim=OptimConfig(lr=5e-2, warmup_steps=0),
                                monitor_judge={"kind": "synthetic_gold"})  # fmt: skip
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    annotator_before = {n: p.detach().clone() for n, p in module.annotator.named_parameters()}
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, prompts_data())
    moved = {n for n, p in module.policy.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved)
    assert all(torch.equal(p, annotator_before[n]) for n, p in module.annotator.named_parameters())
    assert not any(key.startswith("_annotator") for key in module.state_dict())
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    assert 0.0 <= float(metrics["online/gold_agreement_step"]) <= 1.0
    assert 0.0 <= float(metrics["online/gold_agreement_epoch"]) <= 1.0
    assert 0.0 <= float(metrics["weights/mean"]) < 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reference": "precomputed"}, "precomputed reference cannot exist"),
        ({"confidence": "rank"}, "whole dataset"),
        ({"weighting": "top_n"}, "per batch"),
        ({"temperature": 0.0}, "temperature > 0"),
    ],
)
def test_refuses_settings_that_cannot_work_online(annotator_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OnlinePolicyModule(tiny_spec(), annotator_dir, **kwargs)


def test_fit_without_prompt_text_says_what_is_missing(annotator_dir):
    module = make(annotator_dir)
    batch = next(iter(prompts_data().train_dataloader()))
    with pytest.raises(ConfigError, match="set_prompts"):
        module.sample_pairs(batch)


def test_runs_from_the_fit_cli(annotator_dir, tmp_path, monkeypatch):
    """`python -m cwpo.fit --model online`: LightningCLI's hparams hold only this class's arguments; it must still run."""
    from cwpo import fit

    config = Path(__file__).resolve().parents[2] / "configs" / "online" / "synthetic.yaml"
    monkeypatch.chdir(tmp_path)
    fit.main(["--model", "online", "--config", str(config),
              f"--model.annotator={annotator_dir}", "--model.max_new_tokens=4", "--model.export_dir=adapter",
              "--data.limit=8", "--data.batch_size=4", "--trainer.max_steps=2"])  # fmt: skip
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    # An explicit checkpoint path resumes it (its hyper-parameters parse back into this module's arguments).
    ckpt = tmp_path / "runs" / "online" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    cli = fit.build_cli("online", ["--config", str(config), f"--model.annotator={annotator_dir}",
                                   "--model.max_new_tokens=4", "--model.export_dir=adapter2", "--data.limit=8",
                                   "--data.batch_size=4", "--trainer.max_epochs=2", "--trainer.max_steps=3", "--ckpt_path",
                                   str(ckpt)])  # fmt: skip
    assert cli.trainer.global_step == 3 and Path(cli.trainer.ckpt_path) == ckpt


def test_a_resumed_fit_samples_and_ends_like_the_uninterrupted_one(annotator_dir, tmp_path):
    """Stopped after 2 steps (mid-epoch) and resumed from last.ckpt: the same samples, the same LoRA weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(max_steps: int, root, ckpt_path=None) -> dict[str, torch.Tensor]:
        L.seed_everything(0)
        module = OnlinePolicyModule(tiny_spec(), annotator_dir, lora=LoraSpec(dropout=0.1), max_new_tokens=4,
                                    annotator_max_length=64, temperature=1.5,
                                    optim=OptimConfig(lr=1e-2, warmup_steps=0, scheduler="constant"))  # fmt: skip
        checkpoints = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1)
        trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, callbacks=[checkpoints], default_root_dir=root)  # fmt: skip
        trainer.fit(module, prompts_data(), ckpt_path=ckpt_path)
        return {n: p.detach().clone() for n, p in module.policy.named_parameters() if "lora_" in n}

    straight = fit(4, tmp_path / "straight")
    fit(2, tmp_path / "stopped")
    resumed = fit(4, tmp_path / "stopped", ckpt_path=tmp_path / "stopped" / "last.ckpt")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)
