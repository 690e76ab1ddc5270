"""Tokenising pairs once, for every model: prompt ids, response ids (response-only loss), a token budget.

Output columns (``docs/ARCHITECTURE.md``): ``prompt_ids``, ``chosen_ids``, ``rejected_ids``. Response ids are
the response tokens only and end with the end token; ``prompt_ids + chosen_ids`` is exactly what the model
reads. Other columns pass through.

How a prompt becomes text
    * a message-list prompt goes through ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``;
      a tokenizer without a chat template gets the HH-RLHF layout instead
      (``"\\n\\nHuman: ...\\n\\nAssistant:"``, and a response gets a leading space if it has none);
    * a text prompt is used as it is, unless ``chat_template_for_text=True`` (then it is one user message);
      a text prompt that already holds the template's special tokens (``<|im_start|>``) was rendered by it and is
      used as it is, never templated a second time.
    Text produced by a chat template already holds its special tokens (BOS included), so it is tokenised with
    ``add_special_tokens=False``; a plain text prompt gets the tokenizer's own leading specials (BOS). With a
    chat template, responses lose leading whitespace (the template ends the prompt with the assistant header).

The prompt/response boundary
    BPE can merge across the boundary (``"Assistant:" + " Sure"``), so the response is found by tokenising the
    prompt, then prompt + response, and taking what follows the prompt's tokens. When the prompt's tokens are
    not a prefix of the joint tokenisation (a merge across the boundary), the response is tokenised on its own
    and the two id lists are concatenated; the model then reads exactly those ids, so the loss mask stays
    exact. Such rows are counted as ``boundary_fallback`` in the report's notes (they are kept).

Decoder and encoder tokenizers (``style``)
    A decoder tokenizer (GPT-2, Llama, SmolLM, the synthetic one) gets ``EOS`` appended to each response. An
    encoder tokenizer (BERT: ``[CLS] text [SEP]``) is recognised by the special token it appends to every
    text: the prompt is ``[CLS] prompt [SEP]`` and each response ends with ``[SEP]`` (no EOS exists), which is
    BERT's own pair layout, for the annotator.

The token budget (``max_length``, paper default 512)
    ``truncation="drop"`` is the paper's length filter: a pair whose prompt plus longer response is over the
    budget is dropped and counted (``over_budget``). ``truncation="keep_end"`` keeps the pair: the prompt keeps
    its *end* (and its leading specials) down to ``min_prompt_tokens``, then responses are cut from the right
    (a cut response loses its end token: it did not end). A response that would keep zero tokens is dropped
    and counted (``response_truncated_to_zero``), never kept empty.

Caching
    Rows are tokenised by ``datasets.Dataset.map`` (batched) into the id columns and, per row, its drop reason and
    notes; the report is counted from those columns, so a result ``datasets`` finds in its own cache (a dataset
    read from files, under a fingerprint of its fingerprint, the tokenizer and these settings) reports the same.
    With ``cache_dir``, the result is also saved under a key of :func:`cwpo.io.stable_hash` over the data's content
    fingerprint, the tokenizer's identity and these settings, written atomically, and reloaded next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cwpo.data._progress import quiet_datasets
from cwpo.data.report import FilterReport
from cwpo.errors import ConfigError, DataError
from cwpo.io import atomic_path, stable_hash

logger = logging.getLogger(__name__)

# Bump when the tokenised output changes for the same inputs (invalidates caches).
TOKENIZE_VERSION = 2
TRUNCATION_POLICIES = ("drop", "keep_end")
STYLES = ("auto", "decoder", "encoder")
_BATCH = 512


@dataclass
class TokenizeConfig:
    """Settings of :func:`tokenize_pairs`.

    Args:
        max_length: token budget of prompt + the longer response (paper: 512 HH-RLHF/SHP, 1024 TL;DR,
            2048 UltraFeedback).
        truncation: ``"drop"`` (paper's length filter: drop and count over-budget pairs) or ``"keep_end"``
            (truncate: keep the prompt's end, then cut responses, never to zero tokens).
        min_prompt_tokens: with ``keep_end``, the prompt keeps at least this many of its last tokens (fewer only
            when it is shorter) before responses are cut.
        chat_template_for_text: send text prompts through the chat template as one user message (message-list
            prompts always go through it). Needs a tokenizer with a chat template.
        style: ``"auto"``, ``"decoder"`` (EOS ends responses) or ``"encoder"`` (``[SEP]`` ends prompt and responses).
        eos_token: the token that ends a response in decoder style (default: the tokenizer's EOS; e.g.
            ``"<|eot_id|>"`` for Llama-3 chat).
    """

    max_length: int = 512
    truncation: str = "drop"
    min_prompt_tokens: int = 64
    chat_template_for_text: bool = False
    style: str = "auto"
    eos_token: str | None = None

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        if self.truncation not in TRUNCATION_POLICIES:
            raise ConfigError(f"truncation must be one of {TRUNCATION_POLICIES}, got {self.truncation!r}")
        if self.style not in STYLES:
            raise ConfigError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.min_prompt_tokens < 1:
            raise ConfigError(f"min_prompt_tokens must be >= 1, got {self.min_prompt_tokens}")


def render_messages_plain(messages: list[dict[str, str]]) -> str:
    """Messages in the HH-RLHF layout, ending with the assistant turn to answer (no chat template)."""
    names = {"user": "Human", "assistant": "Assistant"}
    turns = "".join(f"\n\n{names.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:"


def _ids(encoding) -> list[list[int]]:
    return [list(ids) for ids in encoding["input_ids"]]


class PairTokenizer:
    """Tokenises records (prompt + responses) for one tokenizer and :class:`TokenizeConfig`.

    Args:
        tokenizer: a Hugging Face tokenizer (fast tokenizers are much quicker).
        config: the settings.
    """

    def __init__(self, tokenizer, config: TokenizeConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config or TokenizeConfig()
        with_specials = list(tokenizer("a")["input_ids"])
        without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        start = next(
            (i for i in range(len(with_specials) - len(without) + 1) if with_specials[i : i + len(without)] == without),
            None,
        )
        if start is None:
            raise ConfigError(f"cannot locate the special tokens {type(tokenizer).__name__} adds to a text")
        self.prefix_ids = with_specials[:start]
        self.suffix_ids = with_specials[start + len(without) :]
        style = self.config.style
        if style == "auto":
            style = "encoder" if self.suffix_ids else "decoder"
        self.style = style
        if style == "encoder":
            if not self.suffix_ids:
                sep = getattr(tokenizer, "sep_token_id", None)
                if sep is None:
                    raise ConfigError("encoder style needs a tokenizer that ends texts with a special token ([SEP])")
                self.suffix_ids = [sep]
            self.end_ids = list(self.suffix_ids)
        else:
            eos = self.config.eos_token
            eos_id = tokenizer.convert_tokens_to_ids(eos) if eos is not None else tokenizer.eos_token_id
            if eos_id is None or (eos is not None and eos_id == tokenizer.unk_token_id):
                raise ConfigError(f"the tokenizer has no end-of-sequence token {eos or ''}; set eos_token")
            self.end_ids = [eos_id]
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.config.chat_template_for_text and not self.has_template:
            raise ConfigError("chat_template_for_text=True but the tokenizer has no chat template")
        self.template_markers = self._template_markers() if self.has_template and style == "decoder" else ()

    def _template_markers(self) -> tuple[str, ...]:
        """The special tokens the chat template writes around a user message (``<|im_start|>``, ``<|im_end|>``):
        a text prompt holding one was rendered by a template already."""
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                                      tokenize=False)  # fmt: skip
        specials = {str(t) for t in getattr(self.tokenizer, "all_special_tokens", [])}
        specials |= {str(t) for t in self.tokenizer.get_added_vocab()}
        return tuple(sorted(t for t in specials if len(t) > 1 and t in rendered))

    def prompt_text(self, prompt: str | list[dict[str, str]]) -> tuple[str, bool]:
        """The prompt as the text the model reads, and whether a chat template produced it."""
        if isinstance(prompt, str) and any(marker in prompt for marker in self.template_markers):
            # Already rendered by the chat template (e.g. a file of templated text): applying it again would nest a
            # second system turn and header around it, and a BOS before it would be a second one.
            return prompt, True
        if isinstance(prompt, str) and not self.config.chat_template_for_text:
            return prompt, False
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.has_template and self.style == "decoder":
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return text, True
        return render_messages_plain(messages), False

    def _response_text(self, response: str, templated: bool, plain_from_messages: bool) -> str:
        if templated:
            return response.lstrip()
        if plain_from_messages and response[:1] and not response[:1].isspace():
            return " " + response
        return response

    def encode_batch(
        self, prompts: list, responses: dict[str, list[str]]
    ) -> tuple[list[list[int]], dict[str, list[list[int]]], list[int]]:
        """Prompt ids and response ids (with end tokens) of a batch; also each row's count of boundary fallbacks."""
        tokenizer = self.tokenizer
        rendered = [self.prompt_text(p) for p in prompts]
        texts = [text for text, _ in rendered]
        templated = [flag for _, flag in rendered]
        from_messages = [not isinstance(p, str) for p in prompts]
        fallbacks = [0] * len(prompts)
        if self.style == "encoder":
            prompt_ids = _ids(tokenizer(texts, add_special_tokens=True))
            out = {}
            for name, values in responses.items():
                texts_r = [self._response_text(r, False, m) for r, m in zip(values, from_messages, strict=True)]
                out[name] = [ids + self.end_ids for ids in _ids(tokenizer(texts_r, add_special_tokens=False))]
            return prompt_ids, out, fallbacks
        body = _ids(tokenizer(texts, add_special_tokens=False))
        prompt_ids = [b if t else self.prefix_ids + b for b, t in zip(body, templated, strict=True)]
        out = {}
        for name, values in responses.items():
            texts_r = [
                self._response_text(r, t, m and not t) for r, t, m in zip(values, templated, from_messages, strict=True)
            ]
            joint = _ids(tokenizer([p + r for p, r in zip(texts, texts_r, strict=True)], add_special_tokens=False))
            ids_r: list[list[int] | None] = []
            missing = []
            for i, (p_ids, j_ids) in enumerate(zip(body, joint, strict=True)):
                if j_ids[: len(p_ids)] == p_ids:
                    ids_r.append(j_ids[len(p_ids) :])
                else:
                    ids_r.append(None)
                    missing.append(i)
            if missing:  # a merge across the boundary: tokenise those responses on their own
                alone = _ids(tokenizer([texts_r[i] for i in missing], add_special_tokens=False))
                for i, ids in zip(missing, alone, strict=True):
                    ids_r[i] = ids
                    fallbacks[i] += 1
            out[name] = [ids if ids[-1:] == self.end_ids else ids + self.end_ids for ids in ids_r]
        return prompt_ids, out, fallbacks

    def fit_budget(
        self, prompt_ids: list[int], responses: dict[str, list[int]]
    ) -> tuple[list[int], dict[str, list[int]], str | None]:
        """Apply the token budget: ``(prompt_ids, responses, None)``, or a drop reason as the third item."""
        config = self.config
        longest = max((len(ids) for ids in responses.values()), default=0)
        if len(prompt_ids) + longest <= config.max_length:
            return prompt_ids, responses, None
        if config.truncation == "drop":
            return prompt_ids, responses, "over_budget"
        n_prefix = (
            0 if not self.prefix_ids or prompt_ids[: len(self.prefix_ids)] != self.prefix_ids else len(self.prefix_ids)
        )
        head, body = prompt_ids[:n_prefix], prompt_ids[n_prefix:]
        budget = config.max_length - len(head)
        keep = max(min(len(body), budget - longest), min(len(body), config.min_prompt_tokens))
        body = body[len(body) - keep :] if keep > 0 else []
        room = budget - len(body)
        if responses and room < 1:
            return prompt_ids, responses, "response_truncated_to_zero"
        if not responses and room < 0:
            return prompt_ids, responses, "over_budget"
        return head + body, {name: ids[:room] for name, ids in responses.items()}, None


def arrow_table(dataset: Any, columns: Sequence[str]):
    """The columns of a ``datasets.Dataset`` (or of the one a torch wrapper keeps as ``.dataset``, same rows) as a
    pyarrow table, row order and selections respected; ``None`` for anything else or a missing column."""
    import datasets

    inner = getattr(dataset, "dataset", None)
    if not isinstance(dataset, datasets.Dataset) and isinstance(inner, datasets.Dataset) and len(inner) == len(dataset):
        dataset = inner
    if not isinstance(dataset, datasets.Dataset) or not set(columns) <= set(dataset.column_names):
        return None
    return dataset.select_columns(list(columns)).with_format("arrow")[:]


def dataset_fingerprint(dataset: Any, columns: Sequence[str] | None = None) -> str:
    """A hash of a dataset's content (``columns``, or every column), in row order, the same on any machine.

    Token-id columns (lists of integers) are hashed from their Arrow values, fast and independent of buffer layout;
    other values through their JSON form, since equal tables can differ in buffer layout (a ``select`` then
    ``flatten_indices`` keeps other offsets and padding than a fresh table). ``dataset`` is a ``datasets.Dataset``,
    a torch dataset wrapping one, or any sequence of dict rows.
    """
    import pyarrow as pa

    names = getattr(getattr(dataset, "dataset", dataset), "column_names", None)
    selected = [c for c in (columns or names or ()) if names is None or c in names] or names
    table = arrow_table(dataset, selected) if selected else None
    digest = hashlib.sha256()
    if table is None:
        for row in dataset:
            fields = {key: row[key] for key in selected or () if key in row} or row
            digest.update(json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str).encode())
        return digest.hexdigest()[:16]
    import numpy as np
    import pyarrow.compute as pc

    digest.update(f"{table.schema}|rows={table.num_rows}".encode())
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_list(column.type) and pa.types.is_integer(column.type.value_type):
            digest.update(np.asarray(pc.list_value_length(column), dtype=np.int64).tobytes())
            digest.update(np.asarray(pc.list_flatten(column), dtype=np.int64).tobytes())
        else:
            digest.update(json.dumps(column.to_pylist(), sort_keys=True, ensure_ascii=False, default=str).encode())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides a tokenizer's output: its model, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = hashlib.sha256(backend.to_str().encode()).hexdigest()
    else:
        model = stable_hash(sorted(tokenizer.get_vocab().items()))
    return stable_hash(
        {
            "class": type(tokenizer).__name__,
            "model": model,
            "chat_template": getattr(tokenizer, "chat_template", None),
            "specials": {
                name: getattr(tokenizer, name, None)
                for name in (
                    "bos_token_id",
                    "eos_token_id",
                    "pad_token_id",
                    "unk_token_id",
                    "sep_token_id",
                    "cls_token_id",
                )
            },
            "added": sorted((str(k), int(v)) for k, v in tokenizer.get_added_vocab().items()),
        }
    )


def _features(dataset, responses: tuple[str, ...]):
    import datasets

    features = {name: feature for name, feature in dataset.features.items()}
    ids = datasets.List(datasets.Value("int32"))
    features["prompt_ids"] = ids
    for name in responses:
        features[f"{name}_ids"] = ids
    return datasets.Features(features)


def tokenize_pairs(
    dataset,
    tokenizer,
    config: TokenizeConfig | None = None,
    *,
    responses: tuple[str, ...] = ("chosen", "rejected"),
    cache_dir: str | os.PathLike | None = None,
    strict: bool = False,
):
    """Tokenise a dataset of pairs (or of prompts, with ``responses=()``) under one token budget.

    Args:
        dataset: records in the schema.
        tokenizer: a Hugging Face tokenizer.
        config: budget, truncation, chat-template and style settings.
        responses: which response columns to tokenise (``("chosen",)`` for SFT, ``()`` for prompts only).
        cache_dir: save the result here (keyed by data, tokenizer and settings) and reuse it next time.
        strict: raise :class:`DataError` on rows that would be dropped.

    Returns:
        The dataset with ``prompt_ids`` and ``<response>_ids`` columns added and dropped rows removed; its
        :class:`FilterReport` is the loader's report followed by this stage's.

    Raises:
        DataError: a response column is missing, or no row is left.
    """
    import datasets

    config = config or TokenizeConfig()
    responses = tuple(responses)
    dataset = dataset.with_format(None)  # python lists, whatever format the caller set
    missing = [name for name in ("prompt", *responses) if name not in dataset.column_names]
    if missing:
        raise DataError(f"cannot tokenise: missing column(s) {missing}; columns present: {dataset.column_names}")
    settings_key = stable_hash({"tokenizer": tokenizer_fingerprint(tokenizer), "settings": asdict(config),
                                "responses": responses, "version": TOKENIZE_VERSION})  # fmt: skip
    cache_file = None
    if cache_dir is not None:
        key = stable_hash({"data": dataset_fingerprint(dataset), "tokenize": settings_key})
        cache_file = Path(cache_dir) / f"tokenized-{key}"
        if (cache_file / "dataset_info.json").is_file():
            logger.info("tokenised data from cache %s", cache_file)
            return datasets.load_from_disk(str(cache_file))

    encoder = PairTokenizer(tokenizer, config)

    def encode(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        """A batch's ids, and per row why it is dropped (``None``: kept), whether the budget cut it, and its boundary
        fallbacks: the report is counted from these columns, so a cached result gives the same report."""
        record_ids = batch.get("id")
        for name in responses:
            for i, text in enumerate(batch[name]):
                if not isinstance(text, str):
                    raise DataError(f"{name} is a {type(text).__name__}, expected text", row=rows[i],
                                    record_id=record_ids[i] if record_ids is not None else None)  # fmt: skip
        prompt_ids, response_ids, fallbacks = encoder.encode_batch(batch["prompt"], {n: batch[n] for n in responses})
        out: dict[str, list] = {"prompt_ids": [], **{f"{n}_ids": [] for n in responses}, "_drop": [], "_truncated": []}
        for i in range(len(rows)):
            texts = [batch[name][i] for name in responses]
            ids = {name: response_ids[name][i] for name in responses}
            kept_prompt, kept, reason = prompt_ids[i], ids, None
            if any(not text.strip() for text in texts):
                reason = "empty_response"
            elif len(responses) == 2 and texts[0] == texts[1]:
                reason = "identical_responses"
            else:
                kept_prompt, kept, reason = encoder.fit_budget(prompt_ids[i], ids)
            out["prompt_ids"].append(kept_prompt if reason is None else [])
            for name in responses:
                out[f"{name}_ids"].append(kept[name] if reason is None else [])
            out["_drop"].append(reason)
            out["_truncated"].append(reason is None and (kept_prompt != prompt_ids[i] or kept != ids))
        out["_fallbacks"] = fallbacks
        return out

    features = _features(dataset, responses)
    helpers = {"_drop": datasets.Value("string"), "_truncated": datasets.Value("bool"),
               "_fallbacks": datasets.Value("int32")}  # fmt: skip
    with quiet_datasets():
        # Batched and fingerprint-cached: a dataset backed by files (``load_dataset``) finds its tokenised copy in
        # the datasets cache under this fingerprint; an in-memory one is tokenised in memory.
        encoded = dataset.map(encode, batched=True, batch_size=_BATCH, with_indices=True,
                              features=datasets.Features({**features, **helpers}),
                              new_fingerprint=stable_hash([dataset._fingerprint, settings_key]))  # fmt: skip
    report = FilterReport(stage=f"tokenize (max_length={config.max_length}, {config.truncation})", strict=strict,
                          n_read=len(encoded))  # fmt: skip
    columns = encoded.select_columns([*helpers, *(["id"] if "id" in encoded.column_names else [])])[:]
    kept_rows = []
    for row, reason in enumerate(columns["_drop"]):
        if reason is None:
            kept_rows.append(row)
        else:
            report.drop(reason, row=row, record_id=columns["id"][row] if "id" in columns else None)
    report.note("boundary_fallback", sum(columns["_fallbacks"]))
    report.note("truncated", sum(columns["_truncated"]))
    report.n_kept = len(kept_rows)
    if report.n_kept == 0:
        raise DataError(f"no pairs left after tokenisation ({report.summary()})")
    report.log()
    tokenized = encoded.remove_columns(list(helpers))
    if len(kept_rows) < len(encoded):  # copy the kept rows out only when some were dropped
        with quiet_datasets():
            tokenized = tokenized.select(kept_rows).flatten_indices()
    previous = FilterReport.from_dataset(dataset)
    (previous.merge(report) if previous is not None else report).attach(tokenized)
    if cache_file is not None:
        with atomic_path(cache_file, is_dir=True) as tmp, quiet_datasets():
            tokenized.save_to_disk(str(tmp))
    return tokenized
