"""Generation: determinism under a seed, per-prompt seeding, left padding, EOS handling, records, PEFT, vLLM."""

from __future__ import annotations

import json
import time

import pytest
import torch

from cwpo.data.collate import PromptCollator
from cwpo.errors import ConfigError, CwpoError
from cwpo.evaluation.generate import (
    GenerationConfig,
    GenerationModule,
    SeededGumbelSampler,
    decode_completions,
    encode_prompts,
    generate,
    prompt_seed,
    vllm_available,
)

PROMPTS = [
    "the cat sat on",
    "Human : help me please , what is a good answer ? Assistant :",
    "what",
    "how is the dog",
]


def _sample(model, tokenizer, **config):
    config.setdefault("max_new_tokens", 8)
    config.setdefault("progress", False)
    return generate(model, tokenizer, PROMPTS, GenerationConfig(**config))


def _responses(records):
    return [r["response"] for r in records]


def test_same_seed_same_text_and_different_seed_different_text(tiny_llama, word_tokenizer):
    first = _sample(tiny_llama, word_tokenizer, seed=1, batch_size=4)
    again = _sample(tiny_llama, word_tokenizer, seed=1, batch_size=4)
    other = _sample(tiny_llama, word_tokenizer, seed=2, batch_size=4)
    assert first == again
    assert _responses(first) != _responses(other)
    # a random model rarely says EOS: every row ran to max_new_tokens, so a differing row is a differing sample
    assert sum(a != b for a, b in zip(_responses(first), _responses(other), strict=True)) >= 3


def test_sampled_text_does_not_depend_on_batching(tiny_llama, word_tokenizer):
    """Seeds are per prompt: batch size (hence batch composition, order and sharding) does not change a sample."""
    batched = _sample(tiny_llama, word_tokenizer, seed=3, batch_size=4, temperature=0.8, top_p=0.9)
    one_by_one = _sample(tiny_llama, word_tokenizer, seed=3, batch_size=1, temperature=0.8, top_p=0.9)
    pairs = _sample(tiny_llama, word_tokenizer, seed=3, batch_size=3, temperature=0.8, top_p=0.9)
    assert _responses(batched) == _responses(one_by_one) == _responses(pairs)


def test_greedy_left_padded_batch_matches_each_prompt_alone(tiny_llama, word_tokenizer):
    """At temperature 0, a left-padded batch gives each prompt the text it gets alone (batch_size=1: no padding)."""
    assert len({len(ids) for ids in encode_prompts(word_tokenizer, PROMPTS)}) > 1  # the batch really is padded
    batched = _sample(tiny_llama, word_tokenizer, temperature=0.0, batch_size=4, max_new_tokens=10)
    alone = _sample(tiny_llama, word_tokenizer, temperature=0.0, batch_size=1, max_new_tokens=10)
    assert _responses(batched) == _responses(alone)


def test_records_are_ordered_written_and_hold_only_the_response(tmp_path, tiny_llama, word_tokenizer):
    path = tmp_path / "gen" / "responses.jsonl"
    records = generate(
        tiny_llama,
        word_tokenizer,
        PROMPTS,
        GenerationConfig(max_new_tokens=5, batch_size=3, progress=False),
        output_path=path,
    )
    assert [r["index"] for r in records] == list(range(len(PROMPTS)))
    assert [r["prompt"] for r in records] == PROMPTS
    assert all(set(r) == {"index", "prompt", "response", "n_new_tokens"} for r in records)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert written == records
    for record in records:
        assert "<s>" not in record["response"] and "<pad>" not in record["response"]
        # a random model also says <s>/<pad>, which decode drops: at most one word per generated token
        assert 0 < record["n_new_tokens"] <= 5 and len(record["response"].split()) <= record["n_new_tokens"]
        assert not record["response"].startswith(record["prompt"])


@pytest.mark.parametrize("stop_tokens", [(), ("dog",)])
def test_stops_at_eos_and_counts_it(tiny_llama, word_tokenizer, stop_tokens):
    """Steer the model: first step says 'cat', second says EOS (or a stop token); the response is 'cat', 2 tokens."""
    cat = word_tokenizer.convert_tokens_to_ids("cat")
    end = word_tokenizer.convert_tokens_to_ids(stop_tokens[0]) if stop_tokens else word_tokenizer.eos_token_id
    calls = {"n": 0}

    def steer(module, inputs, logits):
        calls["n"] += 1
        bias = logits.new_zeros(logits.shape[-1])
        bias[cat if calls["n"] == 1 else end] = 1e4
        return logits + bias

    handle = tiny_llama.lm_head.register_forward_hook(steer)
    try:
        records = _sample(tiny_llama, word_tokenizer, seed=0, batch_size=4, stop_tokens=stop_tokens)
    finally:
        handle.remove()
    assert _responses(records) == ["cat"] * len(PROMPTS)
    assert [r["n_new_tokens"] for r in records] == [2] * len(PROMPTS)


def test_unknown_stop_token_is_an_error(tiny_llama, word_tokenizer):
    with pytest.raises(ConfigError, match="stop token"):
        GenerationModule(tiny_llama, word_tokenizer, GenerationConfig(stop_tokens=("<|eot_id|>",)))


def test_decode_completions_cuts_at_first_eos(word_tokenizer):
    cat, dog = word_tokenizer.convert_tokens_to_ids(["cat", "dog"])
    eos, pad = word_tokenizer.eos_token_id, word_tokenizer.pad_token_id
    new_tokens = torch.tensor([[cat, dog, eos, dog, pad], [dog, dog, dog, dog, dog], [eos, pad, pad, pad, pad]])
    responses, counts = decode_completions(word_tokenizer, new_tokens, [eos])
    assert responses == ["cat dog", "dog dog dog dog dog", ""]
    assert counts == [3, 5, 1]


def test_module_accepts_a_contract_batch_directly(tiny_llama, word_tokenizer):
    """A datamodule's generation batch (input_ids, attention_mask left padded, index) works without generate()."""
    ids = encode_prompts(word_tokenizer, PROMPTS[:2])
    batch = PromptCollator(pad_token_id=0)([{"index": 10 + i, "prompt_ids": x} for i, x in enumerate(ids)])
    batch = {key: value.to(tiny_llama.device) for key, value in batch.items()}  # a GPU run may have moved it
    module = GenerationModule(tiny_llama, word_tokenizer, GenerationConfig(max_new_tokens=3, temperature=0.0))
    out = module.predict_step(batch, 0)
    assert [r["index"] for r in out] == [10, 11]
    assert all(r["n_new_tokens"] == 3 for r in out)


def test_gumbel_sampler_samples_the_softmax():
    """Exact sampling: a -inf token is never drawn; P(token 1) = 3/4 for logits [0, log 3]."""
    n = 4000
    scores = torch.tensor([[0.0, float(torch.log(torch.tensor(3.0))), float("-inf")]]).repeat(n, 1)
    sampler = SeededGumbelSampler([prompt_seed(0, i) for i in range(n)])
    picks = sampler(torch.zeros(n, 1, dtype=torch.long), scores).argmax(-1)
    assert (picks != 2).all()
    assert abs(picks.float().mean().item() - 0.75) < 0.03
    again = SeededGumbelSampler([prompt_seed(0, i) for i in range(n)])(torch.zeros(n, 1, dtype=torch.long), scores)
    assert torch.equal(again.argmax(-1), picks)


def test_lora_wrapped_model_generates_like_its_base_at_init(tiny_llama, word_tokenizer):
    """PEFT models go through the same path; a fresh LoRA adapter (B = 0) leaves greedy text unchanged."""
    import copy

    from cwpo.models import LoraSpec, apply_lora

    base = _sample(tiny_llama, word_tokenizer, temperature=0.0, batch_size=4)
    peft_model = apply_lora(copy.deepcopy(tiny_llama), LoraSpec(r=4, alpha=8, dropout=0.0)).eval()
    assert _responses(_sample(peft_model, word_tokenizer, temperature=0.0, batch_size=4)) == _responses(base)


def test_chat_messages_with_the_synthetic_tokenizer():
    from cwpo.data.synthetic import build_tokenizer
    from cwpo.models import ModelSpec, load_causal_lm

    from .conftest import TINY_LLAMA

    tokenizer = build_tokenizer()
    model = load_causal_lm(ModelSpec("synthetic", from_scratch=True, config=TINY_LLAMA), tokenizer).eval()
    prompts = [[{"role": "user", "content": "hi , any tips on cooking ?"}], "hello , tell me about space ?"]
    records = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=6, progress=False))
    assert [r["prompt"] for r in records] == prompts
    assert all(0 < r["n_new_tokens"] <= 6 for r in records)


def test_config_is_validated():
    with pytest.raises(ConfigError):
        GenerationConfig(temperature=-1.0)
    with pytest.raises(ConfigError):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ConfigError):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ConfigError):
        GenerationConfig(backend="tgi")


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_clear_error(tiny_llama, word_tokenizer):
    with pytest.raises(CwpoError, match="vllm"):
        generate(tiny_llama, word_tokenizer, PROMPTS, GenerationConfig(backend="vllm", progress=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generation_is_seeded_and_reports_throughput(word_tokenizer):
    """On a GPU: same seed, same text; batching does not change samples; print new tokens/s (greedy vs sampled).

    Run: ``pytest -m gpu -s tests/evaluation/test_generate.py``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type="llama",
        vocab_size=len(word_tokenizer),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=word_tokenizer.pad_token_id,
        bos_token_id=word_tokenizer.bos_token_id,
        eos_token_id=word_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompts = PROMPTS * 32  # 128 prompts
    generate(model, word_tokenizer, prompts[:8], GenerationConfig(max_new_tokens=4, progress=False))  # CUDA warm-up
    runs = {}
    for name, kwargs in {
        "sampled_b32": {"batch_size": 32},
        "sampled_b32_again": {"batch_size": 32},
        "sampled_b8": {"batch_size": 8},
        "greedy_b32": {"batch_size": 32, "temperature": 0.0},
    }.items():
        start = time.perf_counter()
        records = generate(
            model, word_tokenizer, prompts, GenerationConfig(max_new_tokens=128, seed=5, progress=False, **kwargs)
        )
        seconds = time.perf_counter() - start
        tokens = sum(r["n_new_tokens"] for r in records)
        runs[name] = [r["response"] for r in records]
        print(
            f"{name}: {tokens} new tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s (Trainer setup included)"
        )
    assert runs["sampled_b32"] == runs["sampled_b32_again"]
    same = sum(a == b for a, b in zip(runs["sampled_b32"], runs["sampled_b8"], strict=True))
    print(f"batch 32 vs batch 8: {same}/{len(prompts)} samples identical")
    assert same >= len(prompts) - 2  # rare flips from last-bit differences between batched kernels


def test_a_stop_string_cuts_the_response_ends_generation_and_counts_as_ended(tiny_llama, word_tokenizer):
    """Steer every row to say 'cat dog sat mat mat ...': with the stop string 'dog sat' generation stops at 'sat'
    (3 tokens, below the limit: ended) and the response is what came before the stop string."""
    words = word_tokenizer.convert_tokens_to_ids(["cat", "dog", "sat", "mat"])
    calls = {"n": 0}

    def steer(module, inputs, logits):
        calls["n"] += 1
        bias = logits.new_zeros(logits.shape[-1])
        bias[words[min(calls["n"], 4) - 1]] = 1e4
        return logits + bias

    handle = tiny_llama.lm_head.register_forward_hook(steer)
    try:
        records = _sample(tiny_llama, word_tokenizer, seed=0, batch_size=4, stop_strings=("dog sat",))
    finally:
        handle.remove()
    assert _responses(records) == ["cat "] * len(PROMPTS)
    assert [r["n_new_tokens"] for r in records] == [3] * len(PROMPTS)
    assert calls["n"] == 3  # generation stopped there, not at max_new_tokens (8)


def test_decode_completions_cuts_at_the_first_stop_string_before_any_eos(word_tokenizer):
    cat, dog, mat = word_tokenizer.convert_tokens_to_ids(["cat", "dog", "mat"])
    eos = word_tokenizer.eos_token_id
    new_tokens = torch.tensor([[cat, dog, mat, dog, eos], [cat, cat, cat, eos, eos], [mat, dog, cat, dog, mat]])
    responses, counts = decode_completions(word_tokenizer, new_tokens, [eos], stop_strings=("mat", "dog cat"))
    assert responses == ["cat dog ", "cat cat cat", ""]
    assert counts == [3, 4, 1]
    with pytest.raises(ConfigError, match="stop_strings must be non-empty strings"):
        GenerationConfig(stop_strings=("",))
