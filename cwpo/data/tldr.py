"""TL;DR summarisation comparisons (``openai/summarize_from_feedback``, config ``comparisons``).

A raw row holds ``info`` (``post``, ``title``, ``subreddit``; or ``article`` for news), two ``summaries``
(``{"text", "policy", "note"}``) and ``choice`` (0 or 1, the summary the labeller preferred). The prompt is
``"SUBREDDIT: r/<subreddit>\\n\\nTITLE: <title>\\n\\nPOST: <post>\\n\\nTL;DR:"`` and each summary becomes a response
with one leading space, so ``prompt + chosen`` reads naturally. Splits: ``train`` and ``validation``.
"""

from __future__ import annotations

import os
from typing import Any

from cwpo.data._common import collect_pairs, field, local_or_hub_rows
from cwpo.errors import DataError

HUB_NAME = "openai/summarize_from_feedback"
CONFIG = "comparisons"
SPLITS = ("train", "validation")
_PATTERNS = ("{split}.jsonl", "{split}.jsonl.gz", "{split}.parquet", "comparisons/{split}*", "**/{split}-*.parquet")


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
    """One raw comparison as a record (without id), or the drop reason."""
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
    strict: bool = False,
    limit: int | None = None,
):
    """Load TL;DR comparisons from the hub (``load_dataset(HUB_NAME, "comparisons")``) or a local file.

    Args:
        split: ``train`` or ``validation``.
        path: a local jsonl/parquet file in the published schema, or a folder with ``<split>.jsonl`` etc.
        strict: raise :class:`DataError` on pairs that would be dropped.
        limit: read at most this many rows.

    Returns:
        Records with ``post_id``, ``human_label`` = 1 and ``source`` = ``tldr``.
    """
    rows, where = local_or_hub_rows(path, split, _PATTERNS, HUB_NAME, name=CONFIG)
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
