"""Batched, left-padded, KV-cached generation through Lightning's predict loop (or vLLM when asked for).

GRA compares one response of the aligned model with one of its SFT model per test prompt, so generation must
be reproducible: the same seed gives the same text on the same hardware. Sampling here is seeded **per
prompt** (from the base seed and the prompt's index), not per batch or per process: every row draws its own
Gumbel noise from its own generator, so a prompt's response does not depend on the batch size, on which other
prompts share its batch, on the batch order, or on how prompts are sharded over GPUs. (This is stronger than a
per-batch seed, which would tie each response to the batch composition.)

Paper appendix G fixes ``temperature`` and ``max_new_tokens`` for generation, but the values were lost in the
text we have (``/work/shared/seeds/001_*.txt``: "we use temperature and max_new_tokens at inference"). The
defaults here (temperature 1.0, top-p 1.0, 128 new tokens, i.e. plain sampling from the policy) are our
choice; set them explicitly in experiments and report them.

Records: ``{"index": int, "prompt": str | messages, "response": str, "n_new_tokens": int}``, ordered by index.
``response`` holds only the generated text: no prompt, no special tokens, nothing at or after the first EOS or
the first stop string (``GenerationConfig.stop_strings``). ``n_new_tokens`` counts the generated tokens up to and
including that EOS, or the token that completed the stop string (all of them when neither came), so a response
that ended either way has ``n_new_tokens < max_new_tokens``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import GenerationConfig as HFGenerationConfig
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cwpo.data.collate import PromptCollator
from cwpo.errors import ConfigError, CwpoError
from cwpo.io import atomic_path

log = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]
"""A prompt: plain text (used as is) or chat messages (rendered with the tokenizer's chat template)."""


@dataclass
class GenerationConfig:
    """How responses are sampled.

    Args:
        max_new_tokens: most tokens generated per prompt (EOS included).
        temperature: softmax temperature; ``0`` means greedy decoding (no sampling, seed unused).
        top_p: nucleus sampling mass; ``1.0`` turns it off.
        top_k: keep the ``k`` most likely tokens; ``0`` turns it off.
        seed: base seed; prompt ``i`` samples with a seed derived from ``(seed, i)``.
        batch_size: prompts per forward pass (per device).
        max_prompt_length: keep at most this many prompt tokens, dropping from the left (after BOS) so the
            end of the prompt (e.g. ``"\\n\\nAssistant:"``) survives; ``None`` keeps whole prompts.
        chat_template_for_text: render text prompts as one user message through the chat template; must match
            the ``TokenizeConfig`` the policy was trained with.
        stop_tokens: further tokens that end a response, besides the tokenizer's and the model's EOS (e.g.
            ``("<|eot_id|>",)`` when training used ``TokenizeConfig(eos_token="<|eot_id|>")``).
        stop_strings: texts that end a response (e.g. ``("\n\nHuman:",)``): generation of a row stops once its
            text holds one, and the response is cut before the first; it counts as ended, like an EOS.
        backend: ``"hf"`` (transformers ``generate`` in Lightning's predict loop) or ``"vllm"`` (needs the
            optional ``vllm`` package and a model path).
        progress: show a tqdm bar with tokens/s on rank 0.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: int | None = None
    chat_template_for_text: bool = False
    stop_tokens: tuple[str, ...] = ()
    stop_strings: tuple[str, ...] = ()
    backend: Literal["hf", "vllm"] = "hf"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"GenerationConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"GenerationConfig.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"GenerationConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.batch_size < 1:
            raise ConfigError(f"GenerationConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ConfigError(f"GenerationConfig.max_prompt_length must be >= 1 or None, got {self.max_prompt_length}")
        self.stop_strings = tuple(self.stop_strings)
        if any(not isinstance(text, str) or not text for text in self.stop_strings):
            raise ConfigError(f"GenerationConfig.stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"GenerationConfig.backend must be 'hf' or 'vllm', got {self.backend!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of prompt ``index`` under base ``seed`` (63 bits, stable across runs and machines)."""
    digest = hashlib.sha256(f"cwpo-generate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def encode_prompts(
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_prompt_length: int | None = None,
    chat_template_for_text: bool = False,
) -> list[list[int]]:
    """Token ids of prompts exactly as the policy saw them in training (before its response).

    Uses the training tokeniser (:class:`cwpo.data.tokenization.PairTokenizer`), so a prompt is rendered the
    same way here as in SFT/DPO: text as is with the tokenizer's leading specials (BOS), messages through the
    chat template with the generation prompt (or the HH-RLHF layout when there is no template). Long prompts
    lose tokens from the left, after the leading specials, so the end of the prompt survives.
    """
    from cwpo.data.tokenization import PairTokenizer, TokenizeConfig

    for prompt in prompts:
        is_messages = isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt)
        if not (isinstance(prompt, str) or is_messages):
            raise ConfigError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    pair_tokenizer = PairTokenizer(tokenizer, TokenizeConfig(chat_template_for_text=chat_template_for_text))
    prompt_ids, _, _ = pair_tokenizer.encode_batch(list(prompts), {})
    prefix = pair_tokenizer.prefix_ids
    encoded = []
    for prompt, ids in zip(prompts, prompt_ids, strict=True):
        if not ids:
            raise ConfigError(f"prompt {prompt!r} tokenises to nothing; generation needs at least one prompt token")
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            head = prefix if prefix and ids[: len(prefix)] == prefix else []
            body = ids[len(head) :]
            keep = max(max_prompt_length - len(head), 1)
            ids = head + body[-keep:]
        encoded.append(list(ids))
    return encoded


def eos_token_ids(model, tokenizer, stop_tokens: Sequence[str] = ()) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS, the model's generation-config EOS ids and the
    ids of ``stop_tokens``."""
    ids: list[int] = []
    candidates: list[Any] = [getattr(tokenizer, "eos_token_id", None)]
    for token in stop_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ConfigError(f"stop token {token!r} is not a token of this tokenizer")
        candidates.append(token_id)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for candidate in candidates:
        for token_id in candidate if isinstance(candidate, (list, tuple)) else [candidate]:
            if token_id is not None and int(token_id) not in ids:
                ids.append(int(token_id))
    if not ids:
        raise ConfigError("neither the tokenizer nor the model defines an EOS token: generation could not stop")
    return ids


class SeededGumbelSampler(LogitsProcessor):
    """Turns greedy decoding into sampling with one random generator per row (Gumbel-max trick).

    ``argmax(scores + g)`` with ``g = -log(-log(u))``, ``u ~ U(0, 1)`` i.i.d., is an exact sample from
    ``softmax(scores)``; tokens removed by top-k/top-p (``-inf``) stay impossible. Row ``r`` draws ``u`` from
    its own generator seeded with ``seeds[r]``, one draw of the vocabulary size per step, so its sample path
    depends only on its seed and its own logits.

    Args:
        seeds: one seed per batch row, in batch order.
    """

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise CwpoError(f"SeededGumbelSampler got {scores.shape[0]} rows for {len(self.seeds)} seeds")
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        vocab = scores.shape[-1]
        uniform = torch.stack(
            [torch.rand(vocab, generator=g, device=scores.device, dtype=torch.float32) for g in self._generators]
        )
        # clamp keeps log finite at u = 0 (rand is in [0, 1)); the bias this adds is below float32 resolution
        uniform = uniform.clamp_(min=torch.finfo(torch.float32).tiny)
        gumbel = -torch.log(-torch.log(uniform))
        return scores.float() + gumbel


def sampling_processors(config: GenerationConfig, seeds: Sequence[int]) -> LogitsProcessorList:
    """Logits processors that make greedy ``generate`` sample as ``config`` asks (empty when greedy)."""
    processors = LogitsProcessorList()
    if config.greedy:
        return processors
    if config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k > 0:
        processors.append(TopKLogitsWarper(top_k=config.top_k))
    if config.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=config.top_p))
    processors.append(SeededGumbelSampler(seeds))
    return processors


def hf_generation_config(config: GenerationConfig, eos_ids: Sequence[int], pad_token_id: int) -> HFGenerationConfig:
    """The transformers generation config: always ``do_sample=False`` (sampling comes from our processors).

    Fields that change the distribution are set explicitly so a model's shipped ``generation_config.json``
    (e.g. an instruct model's ``repetition_penalty``) cannot leak into evaluation; its sampling fields
    (temperature, top-k, top-p) are inert because transformers applies them only when ``do_sample=True``.
    """
    return HFGenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=1.0,
        top_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_token_id,
        use_cache=True,
    )


def _first_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [at for at in (text.find(s) for s in stop_strings) if at >= 0]
    return min(found) if found else None


def decode_completions(
    tokenizer, new_tokens: torch.Tensor, eos_ids: Sequence[int], stop_strings: Sequence[str] = ()
) -> tuple[list[str], list[int]]:
    """Responses and their token counts from generated ids (prompt already removed).

    Args:
        tokenizer: decodes the tokens (special tokens skipped).
        new_tokens: generated ids after the prompt. Shape (b, n).
        eos_ids: token ids that end a response.
        stop_strings: texts that end a response (cut before the first one).

    Returns:
        The text before the first EOS (or stop string) of each row, and the number of tokens generated up to and
        including it (for a stop string: up to the token that completed it).
    """
    responses, counts = [], []
    eos = set(int(i) for i in eos_ids)
    for row in new_tokens.tolist():
        stop = next((pos for pos, token in enumerate(row) if token in eos), None)
        kept = row if stop is None else row[:stop]
        text = tokenizer.decode(kept, skip_special_tokens=True)
        cut = _first_stop(text, stop_strings) if stop_strings else None
        if cut is None:
            responses.append(text)
            counts.append(len(row) if stop is None else stop + 1)
            continue
        # the fewest tokens whose text holds a stop string (a prefix's text only grows: bisect)
        low, high = 1, len(kept)
        while low < high:
            mid = (low + high) // 2
            if _first_stop(tokenizer.decode(kept[:mid], skip_special_tokens=True), stop_strings) is None:
                low = mid + 1
            else:
                high = mid
        responses.append(text[:cut])
        counts.append(low)
    return responses, counts


class StopOnStrings(StoppingCriteria):
    """Ends a row of ``generate`` once its generated text holds a stop string (other rows go on).

    Args:
        tokenizer: decodes the generated tokens (special tokens skipped), as :func:`decode_completions` does.
        stop_strings: the texts that end a response.
        prompt_width: the (left-padded) prompt length; tokens after it are generated.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop_strings, self.prompt_width = tokenizer, tuple(stop_strings), prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :].tolist(), skip_special_tokens=True)
        done = [_first_stop(text, self.stop_strings) is not None for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _PromptDataset(Dataset):
    def __init__(self, prompt_ids: Sequence[Sequence[int]]):
        self.prompt_ids = prompt_ids

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "prompt_ids": self.prompt_ids[index]}


class GenerationModule(L.LightningModule):
    """Wraps a causal LM (plain or PEFT) for ``Trainer.predict``; one ``generate`` call per batch.

    ``predict_step`` takes a generation batch (``input_ids``, ``attention_mask`` left padded, ``index``) and
    returns ``[{"index", "response", "n_new_tokens"}, ...]``. Rank 0 shows a tqdm bar with new tokens/s;
    ``throughput`` holds this rank's totals after the run.

    Args:
        model: a transformers causal LM or a ``peft`` model wrapping one.
        tokenizer: its tokenizer (must define a pad token; ``cwpo.models.load_tokenizer`` sets one).
        config: sampling settings.
    """

    def __init__(self, model, tokenizer, config: GenerationConfig | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        if tokenizer.pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token: left padding needs one (use cwpo.models.load_tokenizer)")
        self.eos_ids = eos_token_ids(model, tokenizer, self.config.stop_tokens)
        self.throughput: dict[str, float] = {"tokens": 0.0, "seconds": 0.0, "tokens_per_s": 0.0}
        self._bar = None
        self._start = 0.0

    def on_predict_start(self) -> None:
        show = self.config.progress and self.trainer.is_global_zero
        total = self.trainer.num_predict_batches[0] if self.trainer.num_predict_batches else None
        self._bar = tqdm(total=total, desc="generate", unit="batch", disable=not show, dynamic_ncols=True)
        self.throughput = {"tokens": 0.0, "seconds": 0.0, "tokens_per_s": 0.0}
        self._start = time.perf_counter()

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0) -> list[dict[str, Any]]:
        index = batch["index"].tolist()
        seeds = [prompt_seed(self.config.seed, i) for i in index]
        prompt_width = batch["input_ids"].shape[1]
        sequences = self.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            generation_config=hf_generation_config(self.config, self.eos_ids, self.tokenizer.pad_token_id),
            logits_processor=sampling_processors(self.config, seeds),
            stopping_criteria=StoppingCriteriaList(
                [StopOnStrings(self.tokenizer, self.config.stop_strings, prompt_width)]
                if self.config.stop_strings
                else []
            ),
        )
        responses, counts = decode_completions(
            self.tokenizer, sequences[:, prompt_width:], self.eos_ids, self.config.stop_strings
        )
        self._update_progress(sum(counts))
        return [
            {"index": i, "response": response, "n_new_tokens": count}
            for i, response, count in zip(index, responses, counts, strict=True)
        ]

    def _update_progress(self, n_tokens: int) -> None:
        elapsed = time.perf_counter() - self._start
        self.throughput["tokens"] += n_tokens
        self.throughput["seconds"] = elapsed
        self.throughput["tokens_per_s"] = self.throughput["tokens"] / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(tok_per_s=f"{self.throughput['tokens_per_s']:.1f}", refresh=False)

    def on_predict_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def default_trainer(**overrides) -> L.Trainer:
    """A Trainer for inference only: one device unless told otherwise, no logger, checkpoints or Lightning bar."""
    kwargs: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _gather_records(trainer: L.Trainer, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' records, deduplicated by index (samplers may repeat rows to even out shards), sorted."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[list[dict[str, Any]] | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, local)
        local = [record for part in gathered for record in (part or [])]
    by_index = {int(record["index"]): record for record in local}
    return [by_index[i] for i in sorted(by_index)]


def write_records(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """Write records as jsonl, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    config: GenerationConfig | None = None,
    *,
    trainer: L.Trainer | None = None,
    output_path: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Generate one response per prompt.

    With ``backend="hf"`` this runs ``Trainer.predict`` on a :class:`GenerationModule`; pass a trainer with
    several devices (e.g. ``default_trainer(devices=4, strategy="ddp")``) to shard the prompts over GPUs. Every
    rank returns all records; only rank 0 writes ``output_path``.

    Args:
        model: a causal LM, possibly a PEFT model; for ``backend="vllm"`` a model folder or hub name (save a
            merged copy first: ``model.merge_and_unload().save_pretrained(path)``).
        tokenizer: the model's tokenizer (with a pad token).
        prompts: text or chat messages, one per response; record ``index`` is the position in this list.
        config: sampling settings (defaults: :class:`GenerationConfig`).
        trainer: the Lightning trainer to predict with (default: :func:`default_trainer`).
        output_path: a ``.jsonl`` file for the records.

    Returns:
        Records ``{"index", "prompt", "response", "n_new_tokens"}`` ordered by index.
    """
    config = config or GenerationConfig()
    if len(prompts) == 0:
        raise ConfigError("generate() got no prompts")
    if config.backend == "vllm":
        records = _generate_vllm(model, tokenizer, prompts, config)
        is_writer = True
    else:
        prompt_ids = encode_prompts(
            tokenizer,
            prompts,
            max_prompt_length=config.max_prompt_length,
            chat_template_for_text=config.chat_template_for_text,
        )
        loader = DataLoader(
            _PromptDataset(prompt_ids),
            batch_size=config.batch_size,
            shuffle=False,
            collate_fn=PromptCollator(pad_token_id=tokenizer.pad_token_id),
        )
        module = GenerationModule(model, tokenizer, config)
        trainer = trainer or default_trainer()
        outputs = trainer.predict(module, dataloaders=loader, return_predictions=True) or []
        local = [record for batch in outputs for record in batch]
        records = _gather_records(trainer, local)
        is_writer = trainer.is_global_zero
        if is_writer:
            t = module.throughput
            log.info("generated %d tokens in %.1f s (%.1f tokens/s)", t["tokens"], t["seconds"], t["tokens_per_s"])
    if len(records) != len(prompts):
        raise CwpoError(f"generation returned {len(records)} records for {len(prompts)} prompts")
    records = [
        {
            "index": r["index"],
            "prompt": prompts[r["index"]],
            "response": r["response"],
            "n_new_tokens": r["n_new_tokens"],
        }
        for r in records
    ]
    if output_path is not None and is_writer:
        write_records(output_path, records)
    return records


def vllm_available() -> bool:
    """Whether the optional vLLM backend can be used (checked without importing vllm)."""
    return importlib.util.find_spec("vllm") is not None


def _generate_vllm(model, tokenizer, prompts: Sequence[Prompt], config: GenerationConfig) -> list[dict[str, Any]]:
    """vLLM backend: same prompt encoding, per-prompt seeds and record format as the HF path.

    vLLM samples with its own kernels, so its text differs from the HF backend's for the same seed; it is
    reproducible with itself.
    """
    if not vllm_available():
        raise CwpoError("GenerationConfig.backend='vllm' needs the optional 'vllm' package: pip install 'cwpo[vllm]'")
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(
            "the vLLM backend loads weights itself: pass a model folder or hub name, not a model object "
            "(for a PEFT model save a merged copy: model.merge_and_unload().save_pretrained(path))"
        )
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), tokenizer=getattr(tokenizer, "name_or_path", None) or str(model), seed=config.seed)
    prompt_ids = encode_prompts(
        tokenizer,
        prompts,
        max_prompt_length=config.max_prompt_length,
        chat_template_for_text=config.chat_template_for_text,
    )
    inputs = [{"prompt_token_ids": ids} for ids in prompt_ids]
    params = [
        SamplingParams(
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k if config.top_k > 0 else -1,
            max_tokens=config.max_new_tokens,
            seed=None if config.greedy else prompt_seed(config.seed, i),
            stop_token_ids=[tokenizer.convert_tokens_to_ids(token) for token in config.stop_tokens],
            stop=list(config.stop_strings),  # cut before the stop string, as the HF backend does
            skip_special_tokens=True,
        )
        for i in range(len(prompts))
    ]
    outputs = llm.generate(inputs, sampling_params=params, use_tqdm=config.progress)
    return [
        {"index": i, "response": out.outputs[0].text, "n_new_tokens": len(out.outputs[0].token_ids)}
        for i, out in enumerate(outputs)
    ]
