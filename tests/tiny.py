"""The tiny random-init Llama the module tests build (synthetic tokenizer, a few hundred kB of weights)."""

from __future__ import annotations

from cwpo.models import ModelSpec

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def tiny_spec(seed: int = 0) -> ModelSpec:
    """The tiny Llama with the synthetic task's tokenizer, initialised from ``seed``."""
    return ModelSpec("synthetic", config=dict(TINY), from_scratch=True, seed=seed)
