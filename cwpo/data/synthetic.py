"""A synthetic preference task with an exact gold reward: HH-RLHF in miniature, offline, on a CPU.

The generative process
    A **prompt** asks about one of eight topics (``"hi , any tips on cooking ?"``). A **response** is a short
    sequence of words (2 to 16) drawn from four pools: the topic's own words (``bake``, ``oven``, ...), the
    other topics' words (off-topic), neutral filler (``the``, ``maybe``, ...) and "harmful" words
    (``steal``, ``poison``, ...). Each response has a latent quality ``q ~ U(0, 1)`` that raises the share of
    on-topic words and lowers the share of harmful ones, so the two responses of a pair differ in quality by a
    random amount, as real sampled responses do.

The gold reward ``r*(x, y)`` (:func:`gold_reward`), exact and cheap
    + the value of each *distinct* on-topic word (0.6 to 1.4, fixed per word: some words help more),
    - 0.5 per off-topic word, - 2.0 per harmful word, - 0.5 per unknown word,
    - 0.3 per repeated word (any word after its first use, filler excepted),
    - 0.25 per word beyond 10 (verbosity).
    It reads any string (lower-cased, ``<...>`` tags ignored, split on non-letters), so generated text of a
    model, with unknown or special tokens, is scored exactly.

"Human" labels
    Drawn Bradley-Terry from the gold reward: ``P(y1 preferred) = sigmoid((r*(x, y1) - r*(x, y2)) / T)``. The
    temperature ``T`` is calibrated so that labels agree with the gold order ``label_agreement`` of the time
    (default 0.70, about the agreement of real crowd labels with a strong reward model). The noise is largest
    on pairs whose gold rewards are close, so a weak annotator's confidence (its margin) tracks whether its
    label is right: the premise of confidence weighting.

Why it is a fair miniature of HH-RLHF
    Rewards mix helpfulness (on-topic content), harmlessness (a large penalty) and verbosity; labels are noisy
    comparisons, not scores; the best response is not in the data (few responses use all eight topic words
    and stay short), so a policy must generalise from comparisons; and a tiny LM can represent the reward
    (it is a sum over words conditioned on one prompt word) so both the weak annotator and DPO can learn it
    within minutes on two CPU cores. See ``docs/SYNTHETIC.md``.

Use ``load_synthetic`` (loader name ``synthetic``) for pairs in the record schema and :func:`build_tokenizer`
for the word-level tokenizer (no download; it has a chat template).
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cwpo.errors import ConfigError

TOPICS: dict[str, tuple[str, ...]] = {
    "cooking": ("bake", "recipe", "oven", "spice", "flour", "salt", "pan", "boil"),
    "space": ("orbit", "planet", "rocket", "galaxy", "moon", "comet", "star", "launch"),
    "music": ("melody", "guitar", "rhythm", "chord", "song", "piano", "drum", "tempo"),
    "sports": ("team", "coach", "goal", "match", "score", "league", "ball", "sprint"),
    "garden": ("soil", "seed", "bloom", "prune", "flower", "root", "leaf", "water"),
    "travel": ("flight", "hotel", "map", "museum", "ticket", "beach", "train", "luggage"),
    "health": ("sleep", "exercise", "diet", "doctor", "vitamin", "walk", "heart", "rest"),
    "coding": ("function", "debug", "test", "python", "loop", "variable", "bug", "compile"),
}
# Value of a topic word by its position in the topic's tuple: the first words help most.
WORD_VALUES = (1.4, 1.3, 1.2, 1.1, 0.9, 0.8, 0.7, 0.6)
FILLER = (
    "the", "a", "is", "and", "it", "you", "can", "to", "of", "with", "for", "very",
    "good", "i", "think", "this", "some", "more", "try", "maybe", "really", "often", "just", "also",
)  # fmt: skip
HARMFUL = ("hate", "steal", "poison", "weapon", "insult", "scam", "hurt", "cheat")
GREETINGS = ("", "hi ,", "hello ,", "please ,", "so ,", "hey ,")
PROMPT_TEMPLATES = (
    "tell me about {topic} ?",
    "any tips on {topic} ?",
    "what do you know about {topic} ?",
    "how do i get into {topic} ?",
    "can you help me with {topic} ?",
)

OFF_TOPIC_PENALTY = 0.5
HARMFUL_PENALTY = 2.0
UNKNOWN_PENALTY = 0.5
REPEAT_PENALTY = 0.3
LENGTH_FREE_WORDS = 10
LENGTH_PENALTY = 0.25

MIN_WORDS = 2
MAX_WORDS = 16

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<' + message['role'] + '> ' + message['content'] + ' ' + eos_token + ' ' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)

_WORD_TOPIC = {word: topic for topic, words in TOPICS.items() for word in words}
_WORD_VALUE = {word: WORD_VALUES[i] for words in TOPICS.values() for i, word in enumerate(words)}
_FILLER = frozenset(FILLER)
_HARMFUL = frozenset(HARMFUL)
_TAG = re.compile(r"<[^<>\s]*>")
_WORD = re.compile(r"[a-z]+")


def vocabulary() -> list[str]:
    """Every token of the task, special tokens first (their ids are 0..6)."""
    words = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    prompt_words = {w for t in PROMPT_TEMPLATES for w in t.replace("{topic}", "").split()}
    prompt_words |= {w for g in GREETINGS for w in g.split()}
    for group in (TOPICS, *TOPICS.values(), FILLER, HARMFUL, sorted(prompt_words), (".", "!")):
        for word in group:
            if word not in words:
                words.append(word)
    return words


@functools.lru_cache(maxsize=1)
def _cached_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {word: i for i, word in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return tokenizer.to_str()


def build_tokenizer():
    """The task's word-level tokenizer: no download, BOS added, ``<pad>`` != ``</s>``, with a chat template.

    Returns:
        A :class:`transformers.PreTrainedTokenizerFast` over :func:`vocabulary` (lower-cases, splits on
        whitespace and punctuation, unknown words -> ``<unk>``). ``decode`` joins words with spaces.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_cached_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )
    tokenizer.name_or_path = "synthetic"
    return tokenizer


def _prompt_string(prompt: str | list[dict[str, str]] | Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict) and m.get("role") == "user")
    return str(prompt)


def prompt_topic(prompt: str | list[dict[str, str]]) -> str | None:
    """The topic a prompt asks about (the last topic name in it), or ``None``."""
    topics = [w for w in _WORD.findall(_TAG.sub(" ", _prompt_string(prompt).lower())) if w in TOPICS]
    return topics[-1] if topics else None


def response_words(response: str) -> list[str]:
    """The words the gold reward reads: lower-cased letters runs, ``<...>`` tags (special tokens) removed."""
    return _WORD.findall(_TAG.sub(" ", str(response).lower()))


def gold_reward(prompt: str | list[dict[str, str]], response: str) -> float:
    """The exact gold reward ``r*(x, y)`` of a response (module docstring has the formula).

    Robust to any input: generated text with unknown words, special tokens, punctuation or nothing at all.
    """
    topic = prompt_topic(prompt)
    words = response_words(response)
    counts = Counter(words)
    reward = 0.0
    for word, count in counts.items():
        if word in _FILLER:
            continue
        reward -= REPEAT_PENALTY * (count - 1)
        if word in _HARMFUL:
            reward -= HARMFUL_PENALTY * count
        elif word in _WORD_TOPIC:
            if _WORD_TOPIC[word] == topic:
                reward += _WORD_VALUE[word]
            else:
                reward -= OFF_TOPIC_PENALTY * count
        elif word not in TOPICS:  # naming a topic is neutral; anything else outside the vocabulary is not
            reward -= UNKNOWN_PENALTY * count
    reward -= LENGTH_PENALTY * max(0, len(words) - LENGTH_FREE_WORDS)
    return round(reward, 6)


def best_response(prompt: str | list[dict[str, str]]) -> str:
    """A response with the highest gold reward for ``prompt`` (the topic's eight words), for reference."""
    topic = prompt_topic(prompt)
    return " ".join(TOPICS[topic]) if topic else ""


def sample_prompt(rng: random.Random) -> str:
    topic = rng.choice(tuple(TOPICS))
    text = rng.choice(PROMPT_TEMPLATES).format(topic=topic)
    greeting = rng.choice(GREETINGS)
    return f"{greeting} {text}" if greeting else text


def sample_response(rng: random.Random, topic: str) -> str:
    """Words from the four pools; the latent quality ``q`` sets the mixture."""
    quality = rng.random()
    n_words = rng.randint(MIN_WORDS, MAX_WORDS)
    p_on, p_harm, p_off = 0.1 + 0.6 * quality, 0.2 * (1.0 - quality), 0.1
    off_topic = [w for t, ws in TOPICS.items() if t != topic for w in ws]
    words = []
    for _ in range(n_words):
        u = rng.random()
        if u < p_on:
            words.append(rng.choice(TOPICS[topic]))
        elif u < p_on + p_harm:
            words.append(rng.choice(HARMFUL))
        elif u < p_on + p_harm + p_off:
            words.append(rng.choice(off_topic))
        else:
            words.append(rng.choice(FILLER))
    return " ".join(words)


def sample_comparison(rng: random.Random) -> tuple[str, str, str, float, float]:
    """A prompt and two responses with different gold rewards: ``(prompt, y1, y2, r1, r2)``."""
    prompt = sample_prompt(rng)
    topic = prompt_topic(prompt)
    first = sample_response(rng, topic)
    first_reward = gold_reward(prompt, first)
    while True:  # ties carry no preference; resample the second response until the rewards differ
        second = sample_response(rng, topic)
        second_reward = gold_reward(prompt, second)
        if second != first and abs(first_reward - second_reward) > 1e-6:
            return prompt, first, second, first_reward, second_reward


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@functools.lru_cache(maxsize=32)
def temperature_for_agreement(label_agreement: float, n_reference: int = 3000) -> float:
    """The Bradley-Terry temperature ``T`` at which labels agree with gold ``label_agreement`` of the time.

    Solves ``mean(sigmoid(|r1 - r2| / T)) = label_agreement`` by bisection (on ``log T``) over a fixed reference
    sample of pairs (seeded, so the answer is the same everywhere). ``label_agreement = 1`` gives ``T = 0``
    (noise-free labels).
    """
    import numpy as np

    if not 0.5 < label_agreement <= 1.0:
        raise ConfigError(f"label_agreement must be in (0.5, 1], got {label_agreement}")
    if label_agreement == 1.0:
        return 0.0
    rng = random.Random("cwpo-synthetic-calibration")
    margins = np.array([abs(r1 - r2) for _, _, _, r1, r2 in (sample_comparison(rng) for _ in range(n_reference))])

    def agreement(temperature: float) -> float:
        return float(np.mean(1.0 / (1.0 + np.exp(-margins / temperature))))

    low, high = 1e-3, 1e3
    for _ in range(60):
        mid = math.sqrt(low * high)
        if agreement(mid) > label_agreement:
            low = mid
        else:
            high = mid
    return round(math.sqrt(low * high), 6)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the synthetic task's data.

    Args:
        n_pairs: pairs to generate (embedded default: 3,000 train, 200 test).
        seed: the same seed and split give the same pairs on any machine.
        label_agreement: how often the "human" label agrees with the gold order (0.5 < a <= 1).
        noise: the Bradley-Terry temperature ``T`` itself; overrides ``label_agreement`` when set.
        as_messages: give prompts as chat messages (one user turn) instead of text.
    """

    n_pairs: int = 3000
    seed: int = 0
    label_agreement: float = 0.70
    noise: float | None = None
    as_messages: bool = False

    def __post_init__(self) -> None:
        if self.n_pairs < 1:
            raise ConfigError(f"n_pairs must be >= 1, got {self.n_pairs}")
        if self.noise is not None and self.noise < 0:
            raise ConfigError(f"noise (the label temperature) must be >= 0, got {self.noise}")
        if self.noise is None and not 0.5 < self.label_agreement <= 1.0:
            raise ConfigError(f"label_agreement must be in (0.5, 1], got {self.label_agreement}")

    @property
    def temperature(self) -> float:
        return self.noise if self.noise is not None else temperature_for_agreement(self.label_agreement)


def generate_pairs(config: SyntheticConfig, split: str = "train") -> list[dict[str, Any]]:
    """Records in the schema, chosen = the human-preferred response (gold-better ~``label_agreement``)."""
    rng = random.Random(f"cwpo-synthetic-{config.seed}-{split}")
    temperature = config.temperature
    records = []
    for i in range(config.n_pairs):
        prompt, first, second, first_reward, second_reward = sample_comparison(rng)
        margin = first_reward - second_reward
        p_first = (1.0 if margin > 0 else 0.0) if temperature == 0 else _sigmoid(margin / temperature)
        if rng.random() >= p_first:
            first, second, first_reward, second_reward = second, first, second_reward, first_reward
        records.append(
            {
                "id": f"synthetic-{split}-{i}",
                # the prompt ends with "?" and responses start with a space: prompt + response is the full text
                "prompt": [{"role": "user", "content": prompt}] if config.as_messages else prompt,
                "chosen": first if config.as_messages else " " + first,
                "rejected": second if config.as_messages else " " + second,
                "human_label": 1,
                "source": "synthetic",
                "gold_reward_chosen": first_reward,
                "gold_reward_rejected": second_reward,
            }
        )
    return records


def load_synthetic(
    n_pairs: int = 3000,
    split: str = "train",
    *,
    n_test_pairs: int = 200,
    seed: int = 0,
    label_agreement: float = 0.70,
    noise: float | None = None,
    as_messages: bool = False,
):
    """The synthetic task's pairs as a :class:`datasets.Dataset` (loader name ``synthetic``).

    Args:
        n_pairs: number of pairs of every split but ``test`` (default 3,000).
        split: any name; each split is an independent sample (``train``, ``test``, ...).
        n_test_pairs: number of pairs of the ``test`` split (default 200 test prompts).
        seed: the same seed and split give the same pairs on any machine.
        label_agreement: target agreement of the "human" labels with the gold order.
        noise: the Bradley-Terry temperature, overriding ``label_agreement``.
        as_messages: prompts as chat messages.

    Returns:
        Records with ``id``, ``prompt``, ``chosen``, ``rejected``, ``human_label`` (= 1), ``source``,
        ``gold_reward_chosen`` and ``gold_reward_rejected``, with a :class:`FilterReport` attached.
    """
    from cwpo.data.report import FilterReport
    from cwpo.data.schema import build_dataset

    config = SyntheticConfig(
        n_pairs=n_test_pairs if split == "test" else n_pairs,
        seed=seed,
        label_agreement=label_agreement,
        noise=noise,
        as_messages=as_messages,
    )
    records = generate_pairs(config, split)
    report = FilterReport(stage=f"synthetic {split} (T={config.temperature:g})", n_read=len(records))
    return build_dataset(records, report=report)


def pretraining_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Unlabelled text of the task for a strong model's pretraining stage: ``n`` prompts, each with a response of
    a random quality (the generator's own mixture, every quality from spam to on-topic), no preference.

    Records are in the pair schema so the SFT data modules read them (``chosen`` is the text to model; ``rejected``
    is a second independent response and carries no label). Drawn from their own random stream (split
    ``pretrain``), so they are never the train or test pairs' responses.
    """
    if n < 1:
        raise ConfigError(f"pretraining needs n >= 1 texts, got {n}")
    rng = random.Random(f"cwpo-synthetic-{seed}-pretrain")
    records = []
    for i in range(n):
        prompt = sample_prompt(rng)
        topic = prompt_topic(prompt)
        first, second = sample_response(rng, topic), sample_response(rng, topic)
        if second == first:
            second = first + " " + rng.choice(FILLER)
        records.append({"id": f"synthetic-pretrain-{i}", "prompt": prompt, "chosen": " " + first,
                        "rejected": " " + second, "human_label": 1, "source": "synthetic-pretrain"})  # fmt: skip
    return records


def answer_stats(prompt: str | list[dict[str, str]], response: str) -> dict[str, float]:
    """What one answer is made of: its gold reward, word count and the share of its words that are the prompt
    topic's (on-topic), harmful, or other topics' (off-topic)."""
    topic = prompt_topic(prompt)
    words = response_words(response)
    n = len(words)
    on = sum(1 for w in words if _WORD_TOPIC.get(w) == topic)
    off = sum(1 for w in words if w in _WORD_TOPIC and _WORD_TOPIC[w] != topic)
    harm = sum(1 for w in words if w in _HARMFUL)
    share = (lambda k: k / n) if n else (lambda k: 0.0)
    return {"gold_reward": gold_reward(prompt, response), "words": float(n), "on_topic": share(on),
            "off_topic": share(off), "harmful": share(harm)}  # fmt: skip
