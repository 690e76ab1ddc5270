"""Stanford Human Preferences (``stanfordnlp/SHP``): Reddit questions and two top-level comments.

A raw row holds ``history`` (the post), ``human_ref_A``/``human_ref_B`` (the comments), ``labels`` (1 when A
is preferred), ``domain`` (``"askacademia_train"``: subreddit and split) and ``score_ratio``. The prompt is
``history`` in the HH-RLHF layout by default (``"\\n\\nHuman: <history>\\n\\nAssistant:"``, so SHP and HH-RLHF
are tokenised alike; ``prompt_format="{history}"`` keeps it bare) and responses get one leading space.
The paper uses four domains (``PAPER_DOMAINS``), the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from cwpo.data._common import collect_pairs, field, hub_rows, local_or_hub_rows
from cwpo.errors import ConfigError, DataError

HUB_NAME = "stanfordnlp/SHP"
SPLITS = ("train", "validation", "test")
PAPER_DOMAINS = ("askacademia", "askbaking", "askengineers", "askphilosophy")
_PATTERNS = ("{split}.jsonl", "{split}.jsonl.gz", "{split}.json", "{split}.parquet")


def domain_name(domain: str) -> str:
    """``"askacademia_train"`` -> ``"askacademia"``."""
    for split in SPLITS:
        domain = domain.removesuffix(f"_{split}")
    return domain


def parse_pair(
    raw: dict[str, Any], *, domains: frozenset[str] | None, min_score_ratio: float | None, prompt_format: str
) -> dict[str, Any] | str:
    """One raw SHP row as a record (without id), or the drop reason."""
    history = field(raw, "history", str)
    reply_a, reply_b = field(raw, "human_ref_A", str), field(raw, "human_ref_B", str)
    label = field(raw, "labels", int)
    if label not in (0, 1):
        raise DataError(f"labels is {label}, expected 0 or 1")
    domain = domain_name(field(raw, "domain", str))
    if domains is not None and domain not in domains:
        return "filtered_out"
    if min_score_ratio is not None and float(field(raw, "score_ratio", (int, float))) < min_score_ratio:
        return "filtered_out"
    chosen, rejected = (reply_a, reply_b) if label == 1 else (reply_b, reply_a)
    record = {
        "prompt": prompt_format.replace("{history}", history),
        "chosen": " " + chosen.strip(),
        "rejected": " " + rejected.strip(),
        "domain": domain,
    }
    if "post_id" in raw:
        record["post_id"] = str(raw["post_id"])
    return record


def _hub_rows_by_domain(domains: Sequence[str] | None, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if domains is None:
        yield from hub_rows(HUB_NAME, split=split)
        return
    offset = 0
    for domain in domains:  # one folder per domain on the hub: load only what is asked for
        count = 0
        for i, row in hub_rows(HUB_NAME, data_dir=domain, split=split):
            yield offset + i, row
            count += 1
        offset += count  # row numbers run on across domains, so ids stay unique


def load_shp(
    split: str = "train",
    *,
    path: str | os.PathLike | None = None,
    domains: Sequence[str] | None = PAPER_DOMAINS,
    min_score_ratio: float | None = None,
    prompt_format: str = "\n\nHuman: {history}\n\nAssistant:",
    strict: bool = False,
    limit: int | None = None,
):
    """Load SHP pairs from the hub or a local file.

    Args:
        split: ``train``, ``validation`` or ``test``.
        path: a local jsonl/parquet file in the published schema, or a folder with ``<split>.jsonl`` etc.
        domains: subreddits to keep (default: the paper's four); ``None`` keeps all. Other rows are counted
            as ``filtered_out``.
        min_score_ratio: keep pairs whose score ratio is at least this (SHP's authors suggest 2).
        prompt_format: how ``history`` becomes the prompt (``{history}`` is replaced).
        strict: raise :class:`DataError` on pairs that would be dropped.
        limit: read at most this many rows.

    Returns:
        Records with ``domain`` and ``post_id``, ``human_label`` = 1, ``source`` = ``shp``.
    """
    if isinstance(domains, str):
        domains = [domains]
    if "{history}" not in prompt_format:
        raise ConfigError(f"prompt_format must contain '{{history}}', got {prompt_format!r}")
    wanted = None if domains is None else frozenset(domains)
    if path is None:
        rows, where = _hub_rows_by_domain(None if domains is None else list(domains), split), f"hub:{HUB_NAME}/{split}"
    else:
        rows, where = local_or_hub_rows(path, split, _PATTERNS, HUB_NAME)
    return collect_pairs(
        rows,
        lambda raw: parse_pair(raw, domains=wanted, min_score_ratio=min_score_ratio, prompt_format=prompt_format),
        stage=f"shp {split}",
        where=where,
        id_prefix=f"shp-{split}",
        strict=strict,
        limit=limit,
        extra={"human_label": 1, "source": "shp"},
    )
