"""Gold judges: score responses (reward models) or compare two responses (pairwise preference models).

Two small protocols:

* :class:`Judge` ``.score(prompts, responses) -> Tensor (n,)``: higher is better; scores of different prompts
  are not comparable, only two responses to the same prompt are.
* :class:`PairwiseJudge` ``.compare(prompts, responses_a, responses_b) -> Tensor (n,)``: ``> 0`` when A is
  better, ``< 0`` when B is, ``0`` for a tie. Every judge here has ``compare``; for a reward model it is the
  score difference, so GRA can always be computed from ``compare(prompts, aligned, sft)``. Identical
  responses always tie (margin exactly 0, see :func:`tie_identical`).

Judges: any transformers sequence-classification reward model (:class:`SequenceClassifierJudge`; the paper's
Skywork-Reward-V2 and OpenAssistant/reward-model-deberta-v3-large-v2), a SteamSHP-style seq2seq preference
model (:class:`SteamSHPJudge`; stanfordnlp/SteamSHP-flan-t5-large), and any Python reward function
(:class:`FunctionJudge`; the synthetic task's exact gold reward via :func:`synthetic_gold_judge`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from cwpo.errors import ConfigError, CwpoError
from cwpo.evaluation.llm_judge import flatten_prompt

Prompt = str | list[dict[str, str]]

JudgeKind = Literal["reward_model", "steamshp", "llm", "synthetic_gold"]


@runtime_checkable
class Judge(Protocol):
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """Scores of ``responses`` to ``prompts``. Shape (n,)."""
        ...


@runtime_checkable
class PairwiseJudge(Protocol):
    def compare(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """Preference margins, ``> 0`` when ``responses_a[i]`` is better. Shape (n,)."""
        ...


def tie_identical(margins: torch.Tensor, responses_a: Sequence[str], responses_b: Sequence[str]) -> torch.Tensor:
    """Margins with exactly 0 where the two responses are the same text.

    The same (prompt, response) must tie, but a model judge scores it in float32 inside batches padded to
    different widths, which can move the last bits and turn a tie into a spurious win or loss.
    """
    same = torch.tensor([a == b for a, b in zip(responses_a, responses_b, strict=True)], dtype=torch.bool)
    return margins.masked_fill(same.to(margins.device), 0.0) if bool(same.any()) else margins


def _check_lengths(prompts: Sequence[Any], *responses: Sequence[str]) -> int:
    n = len(prompts)
    for r in responses:
        if len(r) != n:
            raise CwpoError(f"a judge got {n} prompts but {len(r)} responses")
    return n


class RewardJudge:
    """Base for judges with a per-response score; ``compare`` is the score difference (A minus B)."""

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def compare(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """``score(a) - score(b)``, exactly 0 for identical responses. Shape (n,)."""
        _check_lengths(prompts, responses_a, responses_b)
        margins = self.score(prompts, responses_a) - self.score(prompts, responses_b)
        return tie_identical(margins, responses_a, responses_b)


class FunctionJudge(RewardJudge):
    """A judge from a Python function ``reward(prompt, response) -> float`` (scores kept in float64).

    Float64 keeps exact equality meaningful: two responses with the same gold reward tie exactly in GRA.
    """

    def __init__(self, reward: Callable[[Prompt, str], float]):
        self.reward = reward

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        _check_lengths(prompts, responses)
        return torch.tensor(
            [float(self.reward(p, r)) for p, r in zip(prompts, responses, strict=True)], dtype=torch.float64
        )


def synthetic_gold_judge() -> FunctionJudge:
    """The synthetic task's exact gold reward (``cwpo.data.synthetic.gold_reward``)."""
    from cwpo.data.synthetic import gold_reward

    return FunctionJudge(gold_reward)


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages for a prompt, for a reward model's chat template.

    Messages pass through. An Anthropic HH transcript (``"\\n\\nHuman: ...\\n\\nAssistant:"``) becomes
    alternating user/assistant turns (:func:`cwpo.data.hh_rlhf.dialogue_to_messages`; the final empty
    ``Assistant:`` turn is dropped, the response fills it). Any other text is one user message.
    """
    if not isinstance(prompt, str):
        return [dict(m) for m in prompt]
    if "\n\nHuman:" in prompt:
        from cwpo.data.hh_rlhf import dialogue_to_messages

        return dialogue_to_messages(prompt)
    return [{"role": "user", "content": prompt.strip()}]


def _default_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); the caller restores the order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class SequenceClassifierJudge(RewardJudge):
    """A transformers sequence-classification reward model with one output (``logits[:, 0]`` is the reward).

    Inputs are built the way the paper's gold models document them:

    * ``"chat"``: prompt messages (HH transcripts are split into turns, see :func:`as_messages`) plus the
      response as the assistant turn, rendered with the tokenizer's chat template (Skywork-Reward-V2).
    * ``"pair"``: the tokenizer's text-pair encoding ``tokenizer(prompt, response)``
      (OpenAssistant/reward-model-deberta-v3-large-v2, other encoder reward models).
    * ``"concat"``: ``prompt + response`` as one text with the tokenizer's special tokens (decoder reward
      models trained on concatenations, e.g. cwpo's own BT annotator).

    ``"auto"`` picks chat when the tokenizer has a chat template, else pair when it has a separator token, else
    concat. Batches are right padded (the model reads the last non-pad token, or the first token for
    encoders), run under ``torch.inference_mode``, and grouped by length; scores come back in input order.

    Args:
        model: an ``AutoModelForSequenceClassification`` model with ``num_labels == 1``.
        tokenizer: its tokenizer.
        batch_size: sequences per forward pass.
        max_length: longest input in tokens; longer chat/concat inputs lose tokens from the left (the response
            end, where decoders read the reward, survives), pairs are cut ``longest_first``. ``None``: no cut.
        input_format: ``"auto"``, ``"chat"``, ``"pair"`` or ``"concat"``.
        device: where to run; default: where the model is.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        input_format: Literal["auto", "chat", "pair", "concat"] = "auto",
        device: str | torch.device | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if getattr(model.config, "num_labels", 1) != 1:
            raise ConfigError(f"a reward model has one output; this one has num_labels={model.config.num_labels}")
        if tokenizer.pad_token_id is None:
            raise ConfigError("the reward model's tokenizer has no pad token; batching needs one")
        if model.config.pad_token_id is None:
            # decoder classifiers find the last real token by the pad id
            model.config.pad_token_id = tokenizer.pad_token_id
        if input_format == "auto":
            if getattr(tokenizer, "chat_template", None):
                input_format = "chat"
            elif getattr(tokenizer, "sep_token", None) is not None:
                input_format = "pair"
            else:
                input_format = "concat"
        if input_format not in ("chat", "pair", "concat"):
            raise ConfigError(f"input_format must be auto, chat, pair or concat, got {input_format!r}")
        if input_format == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("input_format='chat' needs a tokenizer with a chat template")
        self.device = torch.device(device) if device is not None else _default_device(model)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.input_format = input_format
        # BERT-style reward models read segment ids; decoders (llama, ...) take no such argument
        self._takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters

    @classmethod
    def from_spec(cls, spec, **kwargs) -> SequenceClassifierJudge:
        """Load a reward model and its tokenizer from a :class:`cwpo.models.ModelSpec` (or name / dict)."""
        from cwpo.models import as_model_spec, load_sequence_classifier, load_tokenizer

        spec = as_model_spec(spec)
        tokenizer = load_tokenizer(spec)
        model = load_sequence_classifier(spec, tokenizer, num_labels=1)
        kwargs.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, tokenizer, **kwargs)

    def encode(self, prompt: Prompt, response: str) -> dict[str, list[int]]:
        """Model inputs of one (prompt, response): ``input_ids`` (and ``token_type_ids`` for pairs)."""
        tokenizer = self.tokenizer
        if self.input_format == "pair":
            truncation = {"truncation": "longest_first", "max_length": self.max_length} if self.max_length else {}
            encoding = tokenizer(flatten_prompt(prompt), response, **truncation)
            keys = ["input_ids"] + (
                ["token_type_ids"] if self._takes_token_types and "token_type_ids" in encoding else []
            )
            return {key: list(encoding[key]) for key in keys}
        if self.input_format == "chat":
            messages = as_messages(prompt) + [{"role": "assistant", "content": response}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(flatten_prompt(prompt) + response, add_special_tokens=True)["input_ids"]
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[-self.max_length :]
        return {"input_ids": list(ids)}

    @torch.inference_mode()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """Rewards, float32 on the CPU. Shape (n,)."""
        n = _check_lengths(prompts, responses)
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores = torch.empty(n, dtype=torch.float32)
        for rows in _batches_by_length([len(e["input_ids"]) for e in encoded], self.batch_size):
            batch = self.tokenizer.pad(
                [encoded[i] for i in rows], padding=True, padding_side="right", return_tensors="pt"
            )
            logits = self.model(**{key: value.to(self.device) for key, value in batch.items()}).logits
            scores[rows] = logits[:, 0].float().cpu()
        return scores


class SteamSHPJudge:
    """A SteamSHP-style seq2seq preference model: reads a post and two responses, says ``A`` or ``B``.

    Published input format (model card of stanfordnlp/SteamSHP-flan-t5-large; the post and responses must
    not contain newlines, so newlines inside them become spaces here)::

        POST: {post}\\n\\n RESPONSE A: {a}\\n\\n RESPONSE B: {b}\\n\\n Which response is better? RESPONSE

    The model's first decoded token is ``A`` or ``B``. We run one decoder step from the decoder start token
    and return the log-odds ``logit(A) - logit(B)`` of that step (the card's example compares the probability
    of the ``A`` token, id 71 in the T5 vocabulary; the log-odds against ``B`` orders pairs identically when
    the two tokens hold nearly all the mass). The card's limit is 512 tokens: longer inputs lose the start of
    the post, never the responses or the question.

    ``compare`` averages both orders by default, ``(m(a, b) - m(b, a)) / 2``, which cancels a constant
    position bias. ``score`` uses the card's single-response recipe: RESPONSE B is ``"."``; it is what
    :class:`Judge` asks for, but ``compare`` is the native use.

    Args:
        model: an ``AutoModelForSeq2SeqLM`` (T5) model.
        tokenizer: its tokenizer.
        batch_size: inputs per forward pass.
        max_length: longest input in tokens (512 for SteamSHP).
        both_orders: average ``compare`` over (a, b) and (b, a).
        token_a, token_b: the answer tokens, as text (must tokenise to one token) or ids.
        device: where to run; default: where the model is.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_length: int = 512,
        both_orders: bool = True,
        token_a: str | int = "A",
        token_b: str | int = "B",
        device: str | torch.device | None = None,
    ):
        if not getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError("SteamSHPJudge needs an encoder-decoder (seq2seq) model such as flan-t5")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else _default_device(model)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.both_orders = both_orders
        self.token_a = self._token_id(token_a)
        self.token_b = self._token_id(token_b)
        start = model.config.decoder_start_token_id
        self.decoder_start_token_id = start if start is not None else model.config.pad_token_id
        if self.decoder_start_token_id is None:
            raise ConfigError("the seq2seq model defines neither decoder_start_token_id nor pad_token_id")

    @classmethod
    def from_spec(cls, spec, **kwargs) -> SteamSHPJudge:
        """Load a seq2seq preference model and its tokenizer from a :class:`cwpo.models.ModelSpec`."""
        from transformers import AutoModelForSeq2SeqLM

        # TODO(models): use a public cwpo.models.load_seq2seq_lm once models.py has one
        from cwpo.models import _build, as_model_spec, load_tokenizer

        spec = as_model_spec(spec)
        tokenizer = load_tokenizer(spec)
        model = _build(AutoModelForSeq2SeqLM, spec, tokenizer)
        kwargs.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, tokenizer, **kwargs)

    def _token_id(self, token: str | int) -> int:
        if isinstance(token, int):
            return token
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"answer token {token!r} tokenises to {len(ids)} tokens {ids}; pass its id instead")
        return int(ids[0])

    @staticmethod
    def format_input(post: str, response_a: str, response_b: str) -> str:
        """The published SteamSHP input text (newlines inside the parts become spaces)."""

        def flat(text: str) -> str:
            return " ".join(text.split("\n")).strip()

        return (
            f"POST: {flat(post)}\n\n RESPONSE A: {flat(response_a)}\n\n RESPONSE B: {flat(response_b)}"
            "\n\n Which response is better? RESPONSE"
        )

    def encode(self, prompt: Prompt, response_a: str, response_b: str) -> list[int]:
        """Token ids of one input, cutting the start of the post when it is too long."""
        post = flatten_prompt(prompt)
        ids = self.tokenizer(self.format_input(post, response_a, response_b))["input_ids"]
        if len(ids) <= self.max_length:
            return list(ids)
        post_ids = self.tokenizer(" ".join(post.split("\n")), add_special_tokens=False)["input_ids"]
        overflow = len(ids) - self.max_length
        kept = (
            self.tokenizer.decode(post_ids[overflow + 1 :], skip_special_tokens=True)
            if overflow < len(post_ids)
            else ""
        )
        ids = self.tokenizer(self.format_input(kept, response_a, response_b))["input_ids"]
        if len(ids) > self.max_length:
            # the responses alone overflow: keep the end (question and EOS) so the model still answers
            ids = ids[-self.max_length :]
        return list(ids)

    @torch.inference_mode()
    def _margins(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]):
        n = _check_lengths(prompts, responses_a, responses_b)
        encoded = [self.encode(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)]
        margins = torch.empty(n, dtype=torch.float32)
        for rows in _batches_by_length([len(e) for e in encoded], self.batch_size):
            batch = self.tokenizer.pad(
                {"input_ids": [encoded[i] for i in rows]}, padding=True, padding_side="right", return_tensors="pt"
            )
            decoder_input_ids = torch.full((len(rows), 1), self.decoder_start_token_id, dtype=torch.long)
            logits = self.model(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                decoder_input_ids=decoder_input_ids.to(self.device),
            ).logits[:, -1, :]
            margins[rows] = (logits[:, self.token_a] - logits[:, self.token_b]).float().cpu()
        return margins

    def compare(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """Log-odds that A is better than B (position-debiased when ``both_orders``; 0 for identical
        responses). Shape (n,)."""
        margins = self._margins(prompts, responses_a, responses_b)
        if self.both_orders:
            margins = (margins - self._margins(prompts, responses_b, responses_a)) / 2
        return tie_identical(margins, responses_a, responses_b)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """Log-odds of preferring each response over the placeholder ``"."`` (the card's reward usage)."""
        return self._margins(prompts, responses, ["."] * len(responses))


def load_judge(kind: JudgeKind, spec=None, **kwargs) -> Judge | PairwiseJudge:
    """Build a gold judge by kind.

    Args:
        kind: ``"reward_model"`` (:class:`SequenceClassifierJudge`), ``"steamshp"`` (:class:`SteamSHPJudge`),
            ``"llm"`` (:class:`cwpo.evaluation.llm_judge.LLMJudge` over an OpenAI-compatible endpoint, no spec) or
            ``"synthetic_gold"`` (:func:`synthetic_gold_judge`, no spec).
        spec: a :class:`cwpo.models.ModelSpec`, hub name or dict, for the model judges.
        **kwargs: passed to the judge's constructor; for ``llm`` the fields of
            :class:`cwpo.evaluation.llm_judge.LLMJudgeConfig` (``base_url`` and ``model`` at least).
    """
    if kind == "synthetic_gold":
        return synthetic_gold_judge()
    if kind == "llm":
        import dataclasses

        from cwpo.evaluation.llm_judge import LLMJudge, LLMJudgeConfig

        if spec is not None:
            raise ConfigError("the llm judge takes no model spec: give base_url and model (an OpenAI-compatible API)")
        names = {f.name for f in dataclasses.fields(LLMJudgeConfig)}
        unknown, missing = sorted(set(kwargs) - names), sorted({"base_url", "model"} - set(kwargs))
        if unknown or missing:
            raise ConfigError(f"llm judge: unknown settings {unknown}, missing {missing}; settings: {sorted(names)}")
        return LLMJudge(LLMJudgeConfig(**kwargs))
    if spec is None:
        raise ConfigError(f"judge kind {kind!r} needs a model spec")
    if kind == "reward_model":
        return SequenceClassifierJudge.from_spec(spec, **kwargs)
    if kind == "steamshp":
        return SteamSHPJudge.from_spec(spec, **kwargs)
    raise ConfigError(f"unknown judge kind {kind!r}; expected reward_model, steamshp, llm or synthetic_gold")


def judge_compare(
    judge: Judge | PairwiseJudge,
    prompts: Sequence[Prompt],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
) -> torch.Tensor:
    """Margins ``> 0`` where A wins, from a judge's ``compare`` or, failing that, its score difference.

    Identical responses tie exactly (:func:`tie_identical`), whatever the judge.
    """
    _check_lengths(prompts, responses_a, responses_b)
    if isinstance(judge, PairwiseJudge):
        margins = judge.compare(prompts, responses_a, responses_b)
    elif isinstance(judge, Judge):
        margins = judge.score(prompts, responses_a) - judge.score(prompts, responses_b)
    else:
        raise ConfigError(f"{type(judge).__name__} has neither compare() nor score()")
    return tie_identical(torch.as_tensor(margins), responses_a, responses_b)
