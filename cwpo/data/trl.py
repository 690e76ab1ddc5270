"""Any preference dataset in TRL's format, from the hub or a local file, under any column names.

TRL's preference rows hold ``prompt``, ``chosen`` and ``rejected``, either as plain strings (the *standard* format:
``{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}``) or as lists of ``{"role", "content"}``
messages (the *conversational* format: a prompt of user/system turns, each response a list holding the assistant
turn). With an *implicit* prompt there is no ``prompt`` column: ``chosen`` and ``rejected`` each hold the whole
text (or conversation), and the prompt is what they share: the messages before the last one (conversational), or
the common beginning up to the last whitespace before they differ (standard), so the responses start at a word.

A conversational prompt stays a list of messages (the tokenizer's chat template renders it); each response becomes
the text of its assistant turn. Other columns pass through. ``columns`` maps the schema's names to the file's
(``{"chosen": "better", "rejected": "worse"}``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cwpo.data._common import collect_pairs, hub_rows
from cwpo.data.files import iter_rows
from cwpo.errors import ConfigError, DataError

# Local folders as the hub lays them out (``data/train-00000-of-00001.parquet``) or as plain files per split.
PATTERNS = ("{split}.jsonl", "{split}.jsonl.gz", "{split}.json", "{split}.parquet", "data/{split}-*.parquet",
            "**/{split}-*.parquet", "{split}/*.parquet")  # fmt: skip


def _messages(value: list, what: str) -> list[dict[str, Any]]:
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise DataError(f"{what} message {i} is not a {{'role', 'content'}} message: {message!r:.60}")
    return value


def _response(value: Any, what: str) -> str:
    """A response as text: the string itself, or the content of a conversational response's one assistant turn."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise DataError(f"{what} is a {type(value).__name__}, expected text or a list of messages")
    messages = _messages(value, what)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise DataError(f"{what} holds the turns {roles}; a response must be one assistant turn (with an explicit "
                        "prompt) or end in one (implicit prompt)")  # fmt: skip
    return messages[0]["content"]


def split_implicit(chosen: Any, rejected: Any) -> tuple[Any, Any, Any] | str:
    """``(prompt, chosen, rejected)`` of an implicit-prompt pair, or a drop reason when they share no prompt."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if len(chosen) < 2 or chosen[:-1] != rejected[:-1] or len(chosen) != len(rejected):
            return "no_shared_prompt"
        return [dict(m) for m in chosen[:-1]], [chosen[-1]], [rejected[-1]]
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise DataError(f"chosen and rejected are a {type(chosen).__name__} and a {type(rejected).__name__}; with "
                        "an implicit prompt both must be text or both lists of messages")  # fmt: skip
    common = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        common += 1
    cut = max(chosen.rfind(" ", 0, common + 1), chosen.rfind("\n", 0, common + 1))
    if cut <= 0:
        return "no_shared_prompt"
    return chosen[:cut], chosen[cut:], rejected[cut:]


def parse_pair(raw: dict[str, Any]) -> dict[str, Any] | str:
    """One TRL-format row (already mapped to the schema's column names) as a record, or the drop reason."""
    if not isinstance(raw, dict):
        raise DataError(f"expected a record, got {type(raw).__name__}")
    missing = [name for name in ("chosen", "rejected") if name not in raw]
    if missing:
        raise DataError(f"missing column(s) {missing} (map other names with columns={{...}}); columns present: "
                        f"{sorted(map(str, raw))}")  # fmt: skip
    record = dict(raw)
    if raw.get("prompt") is None:
        split = split_implicit(raw["chosen"], raw["rejected"])
        if isinstance(split, str):
            return split
        record["prompt"], record["chosen"], record["rejected"] = split
    elif isinstance(raw["prompt"], list):
        record["prompt"] = [dict(m) for m in _messages(raw["prompt"], "prompt")]
    elif not isinstance(raw["prompt"], str):
        raise DataError(f"prompt is a {type(raw['prompt']).__name__}, expected text or a list of messages")
    record["chosen"] = _response(record["chosen"], "chosen")
    record["rejected"] = _response(record["rejected"], "rejected")
    return record


def rename(raw: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """A row with the file's column names mapped to the schema's (``columns``: schema name -> file name)."""
    if not isinstance(raw, dict):
        raise DataError(f"expected a record, got {type(raw).__name__}")
    renames = {file_column: target for target, file_column in columns.items()}
    absent = [name for name in renames if name not in raw]
    if absent:
        raise DataError(f"missing column(s) {absent} named in columns; columns present: {sorted(map(str, raw))}")
    return {renames.get(key, key): value for key, value in raw.items()}


def load_trl(
    split: str | None = "train",
    *,
    path: str | os.PathLike | None = None,
    hub_name: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    columns: dict[str, str] | None = None,
    source: str | None = None,
    strict: bool = False,
    limit: int | None = None,
):
    """Load TRL-format preference pairs from the hub or a local file (see the module docstring for the formats).

    Args:
        split: the split (``train``, ``test``, ``test_prefs``...; a single local file is read whole).
        path: a local jsonl/JSON/parquet file, or a folder with one file per split (``data/<split>-*.parquet``...).
        hub_name: a hub dataset (``trl-lib/ultrafeedback_binarized``), read with ``datasets.load_dataset``.
        config: the hub dataset's configuration name.
        revision: the hub revision (``refs/convert/parquet`` for a dataset published with a loading script).
        columns: schema name -> the dataset's column name, for ``prompt``, ``chosen``, ``rejected``.
        source: written to a ``source`` column (default: the hub name or file stem).
        strict: raise :class:`DataError` on pairs that would be dropped.
        limit: read at most this many rows.

    Returns:
        A pair dataset in the record schema with ``human_label`` = 1 (``chosen`` is the preferred response).
    """
    from cwpo.data._common import find_local_file

    if (path is None) == (hub_name is None):
        raise ConfigError("the trl loader needs exactly one of path (a local file or folder) and hub_name")
    columns = dict(columns or {})
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in columns.items()):
        raise ConfigError(f"columns must map schema names to column names (strings), got {columns!r}")
    if path is not None:
        folder = Path(path)
        file = folder if folder.is_file() or split is None else find_local_file(folder, split, PATTERNS)
        rows, where, name = iter_rows(file), str(file), Path(file).name.split(".")[0]
    else:
        kwargs = {"name": config, "split": split or "train", **({"revision": revision} if revision else {})}
        rows, where, name = hub_rows(hub_name, **kwargs), f"hub:{hub_name}/{split}", hub_name
    return collect_pairs(
        rows,
        (lambda raw: parse_pair(rename(raw, columns))) if columns else parse_pair,
        stage=f"trl {where}",
        where=where,
        id_prefix=f"{name}-{split or 'all'}",
        strict=strict,
        limit=limit,
        extra={"human_label": 1, "source": source or name},
    )
