"""UltraFeedback binarized (``HuggingFaceH4/ultrafeedback_binarized``), splits ``train_prefs``/``test_prefs``.

A raw row holds ``prompt`` (text), ``prompt_id``, ``chosen`` and ``rejected`` (whole conversations as message
lists ending with the assistant's reply), ``score_chosen`` and ``score_rejected``. The record's prompt is the
conversation before the reply (a message list, so chat templates apply), or the ``prompt`` text with
``prompt_as_messages=False``; ``chosen``/``rejected`` are the replies' text. Pairs whose conversations differ
before the reply are dropped (``no_shared_prompt``), and so are ties (``tie``) unless ``drop_ties=False``.
"""

from __future__ import annotations

import os
from typing import Any

from cwpo.data._common import collect_pairs, field, local_or_hub_rows
from cwpo.data.schema import _check_messages
from cwpo.errors import DataError

HUB_NAME = "HuggingFaceH4/ultrafeedback_binarized"
SPLITS = ("train_prefs", "test_prefs")
_PATTERNS = ("{split}.jsonl", "{split}.jsonl.gz", "{split}.parquet", "**/{split}-*.parquet", "**/{split}*.jsonl*")


def _conversation(raw: dict[str, Any], name: str) -> list[dict[str, str]]:
    messages = field(raw, name, list)
    messages = _check_messages(messages, path=None, row=None, record_id=None, what=name)
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else "nothing"
        raise DataError(f"{name} must end with the assistant's reply, ends with {last!r}")
    return messages


def parse_pair(raw: dict[str, Any], *, prompt_as_messages: bool = True, drop_ties: bool = True) -> dict[str, Any] | str:
    """One raw UltraFeedback row as a record (without id), or the drop reason."""
    chosen, rejected = _conversation(raw, "chosen"), _conversation(raw, "rejected")
    score_chosen = float(field(raw, "score_chosen", (int, float)))
    score_rejected = float(field(raw, "score_rejected", (int, float)))
    if chosen[:-1] != rejected[:-1]:
        return "no_shared_prompt"
    if drop_ties and score_chosen == score_rejected:
        return "tie"
    prompt: str | list[dict[str, str]] = chosen[:-1] if prompt_as_messages else field(raw, "prompt", str)
    record = {
        "prompt": prompt,
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
    }
    if "prompt_id" in raw:
        record["prompt_id"] = str(raw["prompt_id"])
    return record


def load_ultrafeedback(
    split: str = "train_prefs",
    *,
    path: str | os.PathLike | None = None,
    prompt_as_messages: bool = True,
    drop_ties: bool = True,
    strict: bool = False,
    limit: int | None = None,
):
    """Load UltraFeedback binarized pairs from the hub or a local file.

    Args:
        split: ``train_prefs`` or ``test_prefs`` (other names are passed through to the hub).
        path: a local jsonl/parquet file in the published schema, or a folder holding ``<split>.jsonl`` /
            ``<split>.parquet`` / the hub's ``data/<split>-*.parquet``. ``None``: the hub.
        prompt_as_messages: the prompt as the conversation before the reply (default) or the ``prompt`` text.
        drop_ties: drop pairs with equal scores (counted as ``tie``).
        strict: raise :class:`DataError` on pairs that would be dropped.
        limit: read at most this many rows.

    Returns:
        Records with ``score_chosen``/``score_rejected`` and ``prompt_id`` passed through, ``human_label`` = 1,
        ``source`` = ``ultrafeedback``.
    """
    rows, where = local_or_hub_rows(path, split, _PATTERNS, HUB_NAME)
    return collect_pairs(
        rows,
        lambda raw: parse_pair(raw, prompt_as_messages=prompt_as_messages, drop_ties=drop_ties),
        stage=f"ultrafeedback {split}",
        where=where,
        id_prefix=f"ultrafeedback-{split}",
        strict=strict,
        limit=limit,
        extra={"human_label": 1, "source": "ultrafeedback"},
    )
