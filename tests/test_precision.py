"""Precision choice (cwpo.precision) and the bf16 paths it picks: a bf16 frozen base with float32 LoRA, and
bf16 autocast in the pipeline's stages."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cwpo.errors import ConfigError
from cwpo.models import LoraSpec, hidden_size
from cwpo.modules.optim import OptimConfig
from cwpo.modules.policy import PolicyModule
from cwpo.precision import cpu_has_fast_bf16, resolve_precision
from tests.modules.test_policy import pair_batch
from tests.tiny import tiny_spec

FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n"


@pytest.mark.parametrize(("extra", "fast"), [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512bw", False)])
def test_cpu_bf16_detection_reads_the_cpu_flags(tmp_path, extra, fast):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(FLAGS.format(extra=extra))
    assert cpu_has_fast_bf16(str(cpuinfo)) is fast


def test_cpu_bf16_detection_without_cpuinfo_says_no(tmp_path):
    assert cpu_has_fast_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("fast", [True, False])
def test_auto_picks_bf16_only_for_wide_models_on_fast_hardware(monkeypatch, fast):
    monkeypatch.setattr("cwpo.precision.hardware_has_fast_bf16", lambda accelerator=None: fast)
    assert resolve_precision("auto", hidden_size=576) == ("bf16-mixed" if fast else "32-true")
    assert resolve_precision("auto", hidden_size=64) == "32-true"  # tiny models run slower under autocast
    assert resolve_precision("fp32", hidden_size=576) == "32-true"
    assert resolve_precision("bf16", hidden_size=64) == "bf16-mixed"  # asked for explicitly


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        resolve_precision("fp16", hidden_size=64)


def test_hidden_size_comes_from_the_config_without_weights(tmp_path):
    from transformers import BertConfig

    assert hidden_size(tiny_spec()) == 32
    BertConfig(hidden_size=48, num_attention_heads=4).save_pretrained(tmp_path)  # a folder with no weights at all
    assert hidden_size(str(tmp_path)) == 48


def test_policy_with_a_bf16_base_keeps_lora_and_loss_in_float32_and_learns():
    """The benchmark's bf16 path: frozen base weights in bf16 (fast matmuls), LoRA weights, their gradients, the
    optimizer state and the loss in float32; at step 0 the policy equals its reference (loss = mean(c)·log 2)."""
    spec = dataclasses.replace(tiny_spec(), dtype="bfloat16")
    module = PolicyModule(spec, lora=LoraSpec(dropout=0.0), beta=0.5, optim=OptimConfig(lr=3e-2))
    module.configure_model()
    base = {p.dtype for n, p in module.policy.named_parameters() if "lora_" not in n}
    lora = {p.dtype for n, p in module.policy.named_parameters() if "lora_" in n}
    assert base == {torch.bfloat16} and lora == {torch.float32}
    batch = pair_batch(weights=[1.0, 0.8, 0.6, 0.9])
    loss, _ = module.compute_loss(batch)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(0.825 * 0.6931471805599453))
    optimizer = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(6):
        loss, _ = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in module.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_pipeline_stages_carry_the_resolved_precision_in_their_trainer_and_keys(monkeypatch):
    from cwpo.pipeline.config import ExperimentConfig, experiment_config
    from cwpo.pipeline.experiment import Experiment

    monkeypatch.setattr("cwpo.precision.hardware_has_fast_bf16", lambda accelerator=None: True)
    wide = {"name_or_path": "synthetic", "from_scratch": True, "config": {"model_type": "llama", "hidden_size": 256}}
    experiment = Experiment(experiment_config({"sft": {"model": {"backbone": wide}}}))
    for stage in ("sft", "policy", None):  # the strong model's training stages; generation and log-probs
        assert experiment.stage_trainer(stage, experiment.strong_backbone)["precision"] == "bf16-mixed"
    annotator = experiment.stage_trainer("annotator", experiment.config.annotator.model.backbone)
    assert annotator["precision"] == "32-true"  # the embedded default's 32-wide annotator
    assert annotator["max_epochs"] == 5  # its own trainer block over the shared one
    explicit = Experiment(experiment_config({"sft": {"model": {"backbone": wide}, "trainer": {
        "max_epochs": 1, "precision": "32-true"}}}))  # fmt: skip
    assert explicit.stage_trainer("sft", explicit.strong_backbone)["precision"] == "32-true"
    assert explicit.stage_trainer("policy", explicit.strong_backbone)["precision"] == "bf16-mixed"  # sft's alone
    with pytest.raises(ConfigError, match="precision: must be one of"):
        Experiment(ExperimentConfig(precision="half"))
