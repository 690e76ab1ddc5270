"""Adapter export in PEFT format (non-empty tensors, model card), loading it back, and merged export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from cwpo.errors import ConfigError, CwpoError
from cwpo.models import LoraSpec, load_causal_lm
from cwpo.modules.causal_lm import ADAPTER_WEIGHTS, check_adapter_file, merge_adapter
from cwpo.modules.export import export_merged, main
from cwpo.modules.policy import PolicyModule
from tests.tiny import TINY, tiny_spec

IDS = torch.tensor([[5, 17, 33, 48, 90, 101, 2], [7, 8, 9, 10, 11, 2, 0]])
MASK = torch.tensor([[1] * 7, [1] * 6 + [0]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A policy with non-zero LoRA B matrices, exported with ``save_adapter``."""
    module = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0), objective="ipo", tau=0.2)
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
    out = tmp_path_factory.mktemp("export") / "adapter"
    module.save_adapter(str(out))
    module.policy.eval()
    with torch.no_grad():
        logits = module.policy(input_ids=IDS, attention_mask=MASK).logits
    return out, logits


def test_adapter_folder_holds_peft_files_with_non_empty_tensors_and_a_model_card(trained):
    out, _ = trained
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "cwpo_backbone.json"} <= {
        p.name for p in out.iterdir()
    }
    assert check_adapter_file(out / ADAPTER_WEIGHTS) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["inference_mode"] is True
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and '`objective`: `"ipo"`' in card


def test_exported_adapter_loads_back_with_peft_to_the_same_outputs(trained):
    from peft import PeftModel

    out, logits = trained
    model = PeftModel.from_pretrained(load_causal_lm(tiny_spec()), str(out)).eval()
    with torch.no_grad():
        assert_close(model(input_ids=IDS, attention_mask=MASK).logits, logits)


def test_merged_export_equals_the_adapter_model(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    out, logits = trained
    assert main(["merge", str(out), str(tmp_path / "merged")]) == 0  # base rebuilt from cwpo_backbone.json
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert_close(merged(input_ids=IDS, attention_mask=MASK).logits, logits, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer.json").exists() or (tmp_path / "merged" / "tokenizer_config.json").exists()
    again = export_merged(out, tmp_path / "again", backbone=tiny_spec())
    assert (again / "model.safetensors").exists()


def test_empty_or_zero_sized_adapter_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"base_model.model.lora_A.weight": torch.zeros(0, 8)}, str(tmp_path / "zero.safetensors"))
    with pytest.raises(CwpoError, match="shape"):
        check_adapter_file(tmp_path / "zero.safetensors")
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(CwpoError, match="no tensors"):
        check_adapter_file(tmp_path / "empty.safetensors")


def test_merging_a_folder_without_an_adapter_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a PEFT adapter folder"):
        merge_adapter(load_causal_lm(tiny_spec()), str(tmp_path))


def test_zero3_merge_path_adds_the_same_deltas_as_peft(trained):
    """The ZeRO-3 merge (gathered ``W += scale · B @ A``) run on ordinary parameters, where gathering is a no-op."""
    from cwpo.modules.causal_lm import _merge_lora_into_partitioned

    out, logits = trained
    merged = _merge_lora_into_partitioned(load_causal_lm(tiny_spec()), out).eval()
    with torch.no_grad():
        assert_close(merged(input_ids=IDS, attention_mask=MASK).logits, logits, rtol=1e-5, atol=1e-5)


ZERO3_SCRIPT = r"""
import os, sys, tempfile, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
import lightning  # noqa: F401  as under a Trainer: its imports load transformers helpers before zero.Init patches torch.Tensor
from transformers.integrations import HfDeepSpeedConfig
from safetensors.torch import load_file
from cwpo.models import LoraSpec, ModelSpec
from cwpo.modules.causal_lm import build_causal_lm, check_adapter_file, gathered_params, response_logps
from cwpo.modules.export import adapter_state_dict, save_adapter

deepspeed.init_distributed("gloo")
config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
          "bf16": {"enabled": True}}  # bf16: parameters born bf16 under zero.Init, as with --trainer.precision bf16-mixed
keep = HfDeepSpeedConfig(config)  # what PolicyModule.configure_model sets up under a ZeRO-3 strategy
spec = ModelSpec("synthetic", config=%(tiny)r, from_scratch=True)
with deepspeed.zero.Init(config_dict_or_path=config):
    model = build_causal_lm(spec, lora=LoraSpec(dropout=0.0))
lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
assert all(p.numel() == 0 and hasattr(p, "ds_shape") for p in lora.values()), "LoRA weights are not partitioned"
assert {p.dtype for p in lora.values()} == {torch.bfloat16}, "PEFT's float32 upcast replaced partitioned parameters"
state = adapter_state_dict(model)
assert all(v.numel() > 0 for v in state.values()) and all(float(v.abs().sum()) == 0 for k, v in state.items() if "lora_B" in k)
engine = deepspeed.initialize(model=model, config=config, optimizer=torch.optim.SGD(list(lora.values()), lr=0.1),
                              model_parameters=list(lora.values()))[0]
with gathered_params(list(lora.values()), modifier_rank=0), torch.no_grad():
    for name, param in lora.items():
        if "lora_B" in name:
            param.normal_(0, 0.3)
ids = torch.tensor([[5, 17, 33, 48, 90, 101, 2]]); labels = ids.clone(); labels[:, :3] = -100
logits_path = response_logps(model, ids, torch.ones_like(ids), labels, impl="logits")[0]
hidden_path = response_logps(model, ids, torch.ones_like(ids), labels, impl="hidden")[0]
torch.testing.assert_close(hidden_path, logits_path, rtol=2e-2, atol=2e-2)  # bf16 weights
out = tempfile.mkdtemp() + "/adapter"
save_adapter(model, out, backbone=spec)
assert check_adapter_file(out + "/adapter_model.safetensors") == 8
saved = load_file(out + "/adapter_model.safetensors")
# The init-adapter merge under ZeRO-3 adds scale * B @ A to the gathered base weight.
with deepspeed.zero.Init(config_dict_or_path=config):
    plain = build_causal_lm(spec, trainable=False)
    merged = build_causal_lm(spec, init_adapter=out, trainable=False)
name = "model.layers.0.self_attn.q_proj.weight"
weights = []
for built in (plain, merged):
    param = dict(built.named_parameters())[name]
    with gathered_params([param]):
        weights.append(param.detach().clone())
key = "base_model.model.model.layers.0.self_attn.q_proj.lora_%%s.weight"
delta = saved[key %% "B"] @ saved[key %% "A"] * 2.0  # alpha / r = 16 / 8
torch.testing.assert_close((weights[1] - weights[0]).float(), delta.float(), rtol=5e-2, atol=1e-2)  # bf16 weights
print("ZERO3-OK")
"""


@pytest.mark.slow
def test_zero3_partitioned_build_export_and_logps_on_cpu(tmp_path):
    """The ZeRO-3 code paths (deepspeed.zero.Init, gathered LoRA init/export/merge, hidden head gather) on CPU + gloo.

    Lightning's DeepSpeedStrategy refuses a CPU, so this drives DeepSpeed directly, in a subprocess (it initialises
    torch.distributed). Run it with ``pytest -m slow tests/modules/test_export.py``.
    """
    import os
    import random
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    script = tmp_path / "zero3.py"
    script.write_text(ZERO3_SCRIPT % {"tiny": TINY})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run([sys.executable, str(script), str(random.randint(20000, 40000))],
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert "ZERO3-OK" in result.stdout, result.stdout[-3000:] + result.stderr[-5000:]
