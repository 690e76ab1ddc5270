"""TL;DR summarisation comparisons: ``trl-lib/tldr-preference`` (the default) or ``openai/summarize_from_feedback``.

Both hub datasets hold OpenAI's Reddit TL;DR comparisons. ``trl-lib/tldr-preference`` (splits ``train``,
``validation``) is in TRL's standard preference format: ``prompt`` (``"SUBREDDIT: r/<subreddit>\\n\\nTITLE:
<title>\\n\\nPOST: <post>\\n\\nTL;DR:"``), ``chosen`` and ``rejected`` summaries as text. The original
``openai/summarize_from_feedback`` (config ``comparisons``) is published with a loading script that ``datasets`` ≥ 4
refuses, so it is read from its parquet revision (``refs/convert/parquet``); a raw row holds ``info`` (``post``,
``title``, ``subreddit``; or ``article`` for news), two ``summaries`` (``{"text", "policy", "note"}``) and ``choice``
(0 or 1, the summary the labeller preferred), and its prompt is built as above.

A local file or folder may be in either schema (each row is read by what it holds). Each summary becomes a response
with one leading space, so ``prompt + chosen`` reads naturally.
"""

from __future__ import annotations

import os
from typing import Any

from cwpo.data._common import collect_pairs, field, local_or_hub_rows
from cwpo.errors import ConfigError, DataError

HUB_NAME = "trl-lib/tldr-preference"
OPENAI_HUB_NAME = "openai/summarize_from_feedback"
CONFIG = "comparisons"
PARQUET_REVISION = "refs/convert/parquet"
SPLITS = ("train", "validation")
_PATTERNS = ("{split}.jsonl", "{split}.jsonl.gz", "{split}.parquet", "data/{split}-*.parquet",
             "comparisons/{split}/*.parquet", "comparisons/{split}*.*", "**/{split}-*.parquet")  # fmt: skip


def format_prompt(info: dict[str, Any]) -> str:
    """The TL;DR prompt of a post (or a news article when the post is missing)."""
    post = info.get("post")
    if isinstance(post, str) and post.strip():
        lines = []
        if isinstance(info.get("subreddit"), str) and info["subreddit"]:
            lines.append(f"SUBREDDIT: r/{info['subreddit']}")
        if isinstance(info.get("title"), str) and info["title"]:
            lines.append(f"TITLE: {info['title']}")
        lines.append(f"POST: {post.strip()}")
        return "\n\n".join(lines) + "\n\nTL;DR:"
    article = info.get("article")
    if isinstance(article, str) and article.strip():
        return f"ARTICLE: {article.strip()}\n\nTL;DR:"
    return ""


def parse_pair(raw: dict[str, Any]) -> dict[str, Any] | str:
    """One row of either schema (see the module docstring) as a record (without id), or the drop reason."""
    if isinstance(raw, dict) and "summaries" not in raw and "chosen" in raw:
        return _parse_preference(raw)
    return _parse_comparison(raw)


def _parse_preference(raw: dict[str, Any]) -> dict[str, Any] | str:
    """A ``trl-lib/tldr-preference`` row: ``prompt``, ``chosen`` and ``rejected`` as text."""
    prompt = field(raw, "prompt", str)
    chosen, rejected = field(raw, "chosen", str), field(raw, "rejected", str)
    return {"prompt": prompt, "chosen": " " + chosen.strip(), "rejected": " " + rejected.strip()}


def _parse_comparison(raw: dict[str, Any]) -> dict[str, Any] | str:
    """An ``openai/summarize_from_feedback`` comparison: ``info``, two ``summaries`` and the ``choice``."""
    info = field(raw, "info", dict)
    summaries = field(raw, "summaries", list)
    choice = field(raw, "choice", int)
    if len(summaries) != 2:
        raise DataError(f"summaries holds {len(summaries)} entries, expected 2")
    if choice not in (0, 1):
        raise DataError(f"choice is {choice}, expected 0 or 1")
    texts = [field(s, "text", str, what=f"summaries[{i}].text") for i, s in enumerate(summaries)]
    for key in ("post", "title", "subreddit", "article"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise DataError(f"info.{key} is a {type(info[key]).__name__}, expected text")
    record = {
        "prompt": format_prompt(info),
        "chosen": " " + texts[choice].strip(),
        "rejected": " " + texts[1 - choice].strip(),
    }
    if "id" in info:
        record["post_id"] = str(info["id"])
    return record


def load_tldr(
    split: str = "train",
    *,
    path: str | os.PathLike | None = None,
    hub: str = HUB_NAME,
    strict: bool = False,
    limit: int | None = None,
):
    """Load TL;DR comparisons from the hub or a local file.

    Args:
        split: ``train`` or ``validation``.
        path: a local jsonl/parquet file in either schema, or a folder with ``<split>.jsonl``,
            ``data/<split>-*.parquet`` (as ``trl-lib/tldr-preference``) or ``comparisons/<split>/*.parquet`` (as the
            parquet revision of ``openai/summarize_from_feedback``).
        hub: with no ``path``: ``trl-lib/tldr-preference`` or ``openai/summarize_from_feedback`` (read from its
            parquet revision).
        strict: raise :class:`DataError` on pairs that would be dropped.
        limit: read at most this many rows.

    Returns:
        Records with ``human_label`` = 1, ``source`` = ``tldr`` and (from the OpenAI schema) ``post_id``.
    """
    if hub not in (HUB_NAME, OPENAI_HUB_NAME):
        raise ConfigError(f"tldr hub must be {HUB_NAME!r} or {OPENAI_HUB_NAME!r}, got {hub!r}")
    kwargs = {"name": CONFIG, "revision": PARQUET_REVISION} if hub == OPENAI_HUB_NAME else {}
    rows, where = local_or_hub_rows(path, split, _PATTERNS, hub, **kwargs)
    return collect_pairs(
        rows,
        parse_pair,
        stage=f"tldr {split}",
        where=where,
        id_prefix=f"tldr-{split}",
        strict=strict,
        limit=limit,
        extra={"human_label": 1, "source": "tldr"},
    )
