"""The synthetic task: exact gold reward, Bradley-Terry label noise at the configured agreement, the tokenizer."""

from __future__ import annotations

import random

import pytest

from cwpo.data import get_filter_report, load_synthetic
from cwpo.data import synthetic as syn
from cwpo.errors import ConfigError


def _agreement(data) -> float:
    return sum(c > r for c, r in zip(data["gold_reward_chosen"], data["gold_reward_rejected"], strict=True)) / len(data)


@pytest.mark.parametrize("target", [0.70, 0.85])
def test_label_agreement_matches_the_configured_value(target):
    """Over 2,000 pairs the labels agree with the gold order within 3 points of the target."""
    data = load_synthetic(2000, seed=11, label_agreement=target)
    assert abs(_agreement(data) - target) <= 0.03


def test_measured_default_agreement_is_exact_for_the_seed():
    """The default (0.70) measured on seed 3: 1,410 of 2,000 labels agree with gold (70.5 %)."""
    data = load_synthetic(2000, seed=3)
    assert round(_agreement(data) * 2000) == 1410
    assert syn.temperature_for_agreement(0.70) == pytest.approx(3.442, abs=1e-3)


def test_noise_free_and_explicit_temperature():
    assert _agreement(load_synthetic(300, label_agreement=1.0)) == 1.0
    assert _agreement(load_synthetic(2000, noise=1e6)) == pytest.approx(0.5, abs=0.04)


def test_gold_reward_exact_values():
    prompt = "hi , tell me about cooking ?"
    assert syn.prompt_topic(prompt) == "cooking"
    # eight distinct on-topic words: 1.4 + 1.3 + 1.2 + 1.1 + 0.9 + 0.8 + 0.7 + 0.6 = 8.0
    assert syn.gold_reward(prompt, syn.best_response(prompt)) == pytest.approx(8.0)
    # bake (1.4) + oven (1.2) - orbit 0.5 (off-topic) - steal 2.0 (harmful) = 0.1; filler is free
    assert syn.gold_reward(prompt, " the bake and oven orbit steal") == pytest.approx(0.1)
    # repeated bake: 1.4 - 0.3 per repeat; 12 words: 0.25 per word beyond 10
    assert syn.gold_reward(prompt, "bake bake bake the the the the the the the the the") == pytest.approx(
        1.4 - 0.6 - 0.5
    )
    # unknown words cost 0.5; tags (special tokens) and punctuation are ignored
    assert syn.gold_reward(prompt, "<s> zzz bake!! </s> <unk>") == pytest.approx(1.4 - 0.5)
    assert syn.gold_reward(prompt, "") == 0.0
    # a message-list prompt reads its user turns
    assert syn.gold_reward([{"role": "user", "content": "tell me about space ?"}], "orbit") == pytest.approx(1.4)
    # no topic: every topic word is off-topic
    assert syn.gold_reward("hello", "bake") == pytest.approx(-0.5)


def test_gold_reward_robust_to_arbitrary_strings():
    rng = random.Random(0)
    alphabet = "abcxyz <>/!?\n\t\u00e9\u4e2d0123456789" + "".join(syn.vocabulary()[7:20])
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert isinstance(syn.gold_reward("tell me about music ?", text), float)


def test_records_schema_and_determinism():
    data = load_synthetic(50, seed=5)
    again = load_synthetic(50, seed=5)
    assert data.to_list() == again.to_list()
    assert load_synthetic(50, seed=6)["chosen"] != data["chosen"]
    row = data[0]
    assert set(row) == {"id", "prompt", "chosen", "rejected", "human_label", "source", "gold_reward_chosen",
                        "gold_reward_rejected"}  # fmt: skip
    assert row["id"] == "synthetic-train-0" and row["human_label"] == 1 and row["source"] == "synthetic"
    assert row["prompt"].endswith("?") and row["chosen"].startswith(" ")
    for record in data:
        assert record["gold_reward_chosen"] == syn.gold_reward(record["prompt"], record["chosen"])
        assert syn.MIN_WORDS <= len(record["chosen"].split()) <= syn.MAX_WORDS
    assert get_filter_report(data).n_kept == 50


def test_default_sizes_and_splits_are_independent():
    train, test = load_synthetic(), load_synthetic(split="test")
    assert (len(train), len(test)) == (3000, 200)
    assert test[0]["id"] == "synthetic-test-0"
    assert train[0]["chosen"] != test[0]["chosen"]


def test_chosen_is_better_on_average_and_confidence_tracks_margin():
    """Chosen responses hold more on-topic words; labels are right more often when the gold margin is large."""
    data = load_synthetic(2000, seed=1)
    margins = [c - r for c, r in zip(data["gold_reward_chosen"], data["gold_reward_rejected"], strict=True)]
    small = [m > 0 for m in margins if abs(m) < 1.5]
    large = [m > 0 for m in margins if abs(m) > 4.0]
    assert sum(large) / len(large) > sum(small) / len(small) + 0.2

    def on_topic(prompt, response):
        topic = syn.prompt_topic(prompt)
        return sum(w in syn.TOPICS[topic] for w in response.split())

    chosen = sum(on_topic(p, c) for p, c in zip(data["prompt"], data["chosen"], strict=True))
    rejected = sum(on_topic(p, r) for p, r in zip(data["prompt"], data["rejected"], strict=True))
    assert chosen > 1.15 * rejected


def test_messages_form():
    data = load_synthetic(5, as_messages=True)
    assert data[0]["prompt"][0]["role"] == "user"
    assert not data[0]["chosen"].startswith(" ")


def test_tokenizer(synthetic_tokenizer):
    tok = synthetic_tokenizer
    assert tok.pad_token == "<pad>" and tok.eos_token == "</s>" and tok.bos_token == "<s>" and tok.unk_token == "<unk>"
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == len(syn.vocabulary())
    ids = tok("Tell me about COOKING ? bake qwerty")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.unk_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "tell me about cooking ? bake"
    text = tok.apply_chat_template([{"role": "user", "content": "tell me about space ?"}], add_generation_prompt=True,
                                   tokenize=False)  # fmt: skip
    assert text == "<s><user> tell me about space ? </s> <assistant>"
    assert tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"]) == [
        "<s>", "<user>", "tell", "me", "about", "space", "?", "</s>", "<assistant>"
    ]  # fmt: skip


def test_bad_config():
    with pytest.raises(ConfigError):
        load_synthetic(10, label_agreement=0.4)
    with pytest.raises(ConfigError):
        load_synthetic(0)
    with pytest.raises(ConfigError):
        load_synthetic(10, noise=-1.0)


def test_pretraining_text_is_unlabelled_task_text_of_every_quality():
    from cwpo.data.synthetic import answer_stats, pretraining_records

    records = pretraining_records(400, seed=0)
    assert len(records) == 400 and records == pretraining_records(400, seed=0)
    assert all(r["prompt"].endswith("?") and r["chosen"].startswith(" ") and r["chosen"] != r["rejected"]
               for r in records)  # fmt: skip
    train = {(r["prompt"], r["chosen"]) for r in load_synthetic(400)}
    assert not train & {(r["prompt"], r["chosen"]) for r in records}  # its own random stream
    rewards = sorted(answer_stats(r["prompt"], r["chosen"])["gold_reward"] for r in records)
    assert rewards[20] < 0 < rewards[-20]  # spam and good answers alike: no preference in it
    stats = answer_stats("tell me about cooking ?", " bake bake hate moon the")
    assert stats["on_topic"] == 0.4 and stats["harmful"] == 0.2 and stats["off_topic"] == 0.2 and stats["words"] == 5
