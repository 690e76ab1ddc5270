"""The FLOP counts behind the MFU of benchmarks/dpo_vs_trl.py, against hand-computed values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("dpo_vs_trl", Path(__file__).parents[1] / "benchmarks" / "dpo_vs_trl.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)

SHAPE = {"body_params": 10, "head_params": 5, "layers": 2, "attention_width": 4}


def test_forward_flops_by_hand():
    """T = 3: dense 2 · (10 + 5) · 3 = 90; attention 2 · layers · width · T · (T + 1) = 2 · 2 · 4 · 3 · 4 = 192."""
    assert bench.forward_flops(SHAPE, 3) == 282.0


@pytest.mark.parametrize(("switches", "passes"), [({"reference": "precomputed"}, 2 * 2 + 1),
                                                  ({"precompute_ref_log_probs": False}, 2 * 2 + 2)])  # fmt: skip
def test_run_flops_counts_a_lora_step_as_two_forwards_and_the_reference_once_or_per_epoch(switches, passes):
    result = {"sequence_lengths": [3, 1], "epochs": 2, "switches": switches}
    per_epoch = 282.0 + (2 * 15 * 1 + 2 * 2 * 4 * 1 * 2)
    assert bench.run_flops(result, SHAPE) == per_epoch * passes


def test_executed_flops_use_padded_positions_head_rows_and_recompute():
    tokens = {"padded_tokens": 20, "response_tokens": 6}
    hidden = {"tokens": tokens, "epochs": 1, "switches": {"logps_impl": "hidden", "reference": "precomputed"}}
    forward = 2 * 10 * 20 + 2 * 5 * 6
    assert bench.executed_flops(hidden, SHAPE) == 2 * forward + forward
    logits_gc = {"tokens": tokens, "epochs": 1, "switches": {"gradient_checkpointing": True}}
    forward = 2 * 10 * 20 + 2 * 5 * 20
    assert bench.executed_flops(logits_gc, SHAPE) == 3 * forward + forward


def test_model_shape_splits_the_parameters_of_a_tied_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path)
    shape = bench.model_shape(str(tmp_path))
    assert shape["head_params"] == 50 * 16
    assert shape["body_params"] + shape["head_params"] == sum(p.numel() for p in model.parameters())
    assert (shape["layers"], shape["attention_width"]) == (2, 16)
