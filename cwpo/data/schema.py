"""The record schema of one preference pair, and the checks every loader runs on every row.

A pair is a row of a :class:`datasets.Dataset` with the columns of ``docs/ARCHITECTURE.md``:

=========================  ======================================================================
``id``                     str, unique within a dataset (``"<source>-<split>-<row>"``)
``prompt``                 str, or a list of ``{"role": str, "content": str}`` messages
``chosen``, ``rejected``   str: response text only (never the prompt); ``chosen`` is human-preferred
``human_label``            int in {0, 1} (optional; loaders write 1: pairs come in human order; a row read with 0
                           and no weak scores is swapped into human order and counted as
                           ``put_in_human_order`` in the report's notes)
``confidence``             float in [0, 1] (optional; written by ``annotate``)
``weak_score_chosen``,     float (optional; the weak annotator's scores)
``weak_score_rejected``
``agrees_with_human``      bool (optional)
``source``                 str (optional; which dataset a row came from)
``gold_reward_chosen``,    float (optional; synthetic task only)
``gold_reward_rejected``
=========================  ======================================================================

Other columns pass through untouched. :func:`normalise_pair` checks one row: structural problems (a
wrong type, a confidence outside [0, 1], a label outside {0, 1}) raise :class:`cwpo.errors.DataError`
naming the file, row and problem; content problems that real data has (an empty response, chosen equal to
rejected) are counted drops in a :class:`cwpo.data.FilterReport`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cwpo.data.report import FilterReport
from cwpo.errors import DataError

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
RESPONSE_COLUMNS = ("chosen", "rejected")
# Optional float columns and whether they are bounded to [0, 1].
FLOAT_COLUMNS = {
    "confidence": True,
    "weight": True,
    "weak_score_chosen": False,
    "weak_score_rejected": False,
    "gold_reward_chosen": False,
    "gold_reward_rejected": False,
    "ref_chosen_logps": False,
    "ref_rejected_logps": False,
}
# Columns an annotated pair carries: such a pair is in the weak annotator's order, not the human's.
WEAK_ORDER_COLUMNS = ("weak_score_chosen", "weak_score_rejected")
# Columns that name the two responses and must be swapped together when a pair is reordered.
PAIRED_COLUMNS = (
    ("chosen", "rejected"),
    ("weak_score_chosen", "weak_score_rejected"),
    ("gold_reward_chosen", "gold_reward_rejected"),
    ("ref_chosen_logps", "ref_rejected_logps"),
)


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """The text of a prompt: the string itself, or its messages' contents joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(message["content"] for message in prompt)


def _check_messages(
    value: list, *, path: str | None, row: int | None, record_id: str | None, what: str = "prompt"
) -> list[dict[str, str]]:
    """Messages checked to be ``{"role": str, "content": str}`` dicts (other keys dropped)."""
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(
                f"{what} message {i} is a {type(message).__name__}, expected a dict with 'role' and 'content'",
                path=path,
                row=row,
                record_id=record_id,
            )
        for key in ("role", "content"):
            if key not in message:
                raise DataError(
                    f"{what} message {i} has no {key!r} (keys: {sorted(map(str, message))})",
                    path=path,
                    row=row,
                    record_id=record_id,
                )
            if not isinstance(message[key], str):
                raise DataError(
                    f"{what} message {i} {key!r} is a {type(message[key]).__name__}, expected text",
                    path=path,
                    row=row,
                    record_id=record_id,
                )
        if not message["role"].strip():
            raise DataError(f"{what} message {i} has an empty role", path=path, row=row, record_id=record_id)
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _as_float(name: str, value: Any, bounded: bool, *, path, row, record_id) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(
            f"{name} is a {type(value).__name__} ({value!r:.40}), expected a number",
            path=path,
            row=row,
            record_id=record_id,
        )
    value = float(value)
    if math.isnan(value):
        raise DataError(f"{name} is NaN", path=path, row=row, record_id=record_id)
    if bounded and not 0.0 <= value <= 1.0:
        raise DataError(f"{name} is {value}, expected a value in [0, 1]", path=path, row=row, record_id=record_id)
    return value


def _as_label(value: Any, *, path, row, record_id) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    raise DataError(f"human_label is {value!r:.40}, expected 0 or 1", path=path, row=row, record_id=record_id)


def normalise_pair(
    record: dict[str, Any],
    *,
    report: FilterReport,
    path: str | None = None,
    row: int | None = None,
) -> dict[str, Any] | None:
    """Check one pair against the schema; return it cleaned, or ``None`` when it is dropped (and counted).

    Args:
        record: the row, already mapped to schema column names (``id`` included).
        report: where drops are counted (raises instead when ``report.strict``).
        path: the file the row came from, for error messages.
        row: the row's 0-based number in ``path``.

    Raises:
        DataError: a column is missing or of the wrong type, or a value is out of range.
    """
    if not isinstance(record, dict):
        raise DataError(f"expected a record (dict), got {type(record).__name__}", path=path, row=row)
    record_id = record.get("id")
    record_id = None if record_id is None else str(record_id)
    missing = [name for name in REQUIRED_COLUMNS if name not in record]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; columns present: {sorted(map(str, record))}",
            path=path,
            row=row,
            record_id=record_id,
        )
    out = dict(record)
    if record_id is not None:
        out["id"] = record_id
    prompt = record["prompt"]
    if isinstance(prompt, list):
        out["prompt"] = _check_messages(prompt, path=path, row=row, record_id=record_id)
    elif not isinstance(prompt, str):
        raise DataError(
            f"prompt is a {type(prompt).__name__} ({prompt!r:.40}), expected text or a list of messages",
            path=path,
            row=row,
            record_id=record_id,
        )
    for name in RESPONSE_COLUMNS:
        if not isinstance(record[name], str):
            raise DataError(
                f"{name} is a {type(record[name]).__name__} ({record[name]!r:.40}), expected text",
                path=path,
                row=row,
                record_id=record_id,
            )
    for name, bounded in FLOAT_COLUMNS.items():
        if name in record:
            out[name] = _as_float(name, record[name], bounded, path=path, row=row, record_id=record_id)
    if "human_label" in record:
        out["human_label"] = _as_label(record["human_label"], path=path, row=row, record_id=record_id)
    if "agrees_with_human" in record and not isinstance(record["agrees_with_human"], bool):
        raise DataError(
            f"agrees_with_human is {record['agrees_with_human']!r:.40}, expected true or false",
            path=path,
            row=row,
            record_id=record_id,
        )
    if "source" in record and not isinstance(record["source"], str):
        raise DataError(f"source is a {type(record['source']).__name__}, expected text", path=path, row=row)

    if not prompt_text(out["prompt"]).strip():
        report.drop("empty_prompt", path=path, row=row, record_id=record_id)
        return None
    if not out["chosen"].strip() or not out["rejected"].strip():
        report.drop("empty_response", path=path, row=row, record_id=record_id)
        return None
    if out["chosen"] == out["rejected"]:
        report.drop("identical_responses", path=path, row=row, record_id=record_id)
        return None
    if out.get("human_label") == 0 and not any(name in out for name in WEAK_ORDER_COLUMNS):
        # The human preferred ``rejected``: every consumer trains towards ``chosen``, so the pair is put in human
        # order here, once. (A pair with weak scores is in the weak annotator's order on purpose, and its
        # ``human_label`` says whether the human agrees: it is left as it is.)
        out = swap_pair(out)
        out["human_label"] = 1
        report.note("put_in_human_order")
    return out


def pair_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """What makes two pairs the same pair: the prompt and both responses (not the id)."""
    prompt = record["prompt"]
    return (prompt if isinstance(prompt, str) else repr(prompt), record["chosen"], record["rejected"])


RAW_HH_TURN = "\n\nHuman:"
OVERLAP_HINT = (
    "responses must hold the response only: load HH-RLHF files with the hh-rlhf loader "
    "({name: hh-rlhf, path: ...}), strip the prompt from the responses, or pass allow_overlap=true to keep such rows"
)


def overlap_problem(record: dict[str, Any]) -> str | None:
    """Why a pair's responses overlap its prompt (a raw HH-RLHF record, a prompt holding the answer), or None."""
    prompt = prompt_text(record["prompt"]).strip()
    # What a prompt may not already hold: with chat messages, the user turns only (an assistant that repeats one of
    # its earlier replies is real dialogue, common in HH-RLHF, not an answer given away).
    messages = record["prompt"] if isinstance(record["prompt"], list) else None
    given = prompt if messages is None else "\n".join(str(m.get("content", "")) for m in messages
                                                      if m.get("role") != "assistant")  # fmt: skip
    for name in RESPONSE_COLUMNS:
        response = record[name]
        if prompt and response.lstrip().startswith(prompt):
            return f"{name} starts with the prompt (a raw HH-RLHF record?)"
        if RAW_HH_TURN in response:
            return f"{name} holds a '\\n\\nHuman:' turn (a raw HH-RLHF dialogue?)"
        if len(response.strip()) >= 20 and response.strip() in given:
            return f"the prompt already contains {name}"
    return None


def build_dataset(
    records: Iterable[dict[str, Any]],
    *,
    report: FilterReport,
    path: str | None = None,
    allow_empty: bool = False,
    rows_in_file: list[int] | None = None,
    keep_duplicates: bool = True,
):
    """A :class:`datasets.Dataset` of already-normalised pairs, with ``report`` attached to its info.

    ``rows_in_file`` are the records' row numbers in ``path`` (for messages; default: their positions). With
    ``keep_duplicates=False`` a pair equal to an earlier one (:func:`pair_key`) is dropped and counted
    (``duplicate``), so its copies cannot land on both sides of a split.

    Raises:
        DataError: the records are empty (after filtering), ids repeat, or columns disagree between rows
            (a prompt that is text in one row and messages in another, a column present only in some rows).
    """
    import datasets

    rows = list(records)
    where = list(rows_in_file) if rows_in_file is not None else list(range(len(rows)))
    if not keep_duplicates:
        seen_pairs: set[tuple[str, str, str]] = set()
        unique, unique_where = [], []
        for row, line in zip(rows, where, strict=True):
            key = pair_key(row)
            if key in seen_pairs:
                report.drop("duplicate", path=path, row=line, record_id=row.get("id"))
                continue
            seen_pairs.add(key)
            unique.append(row)
            unique_where.append(line)
        rows, where = unique, unique_where
    report.n_kept = len(rows)
    if not rows and not allow_empty:
        raise DataError(f"no pairs left after filtering ({report.summary()})", path=path)
    columns = list(rows[0]) if rows else ["id", *REQUIRED_COLUMNS]
    first_prompt_is_text = bool(rows) and isinstance(rows[0]["prompt"], str)
    seen_ids: dict[str, int] = {}
    for i, row in enumerate(rows):
        if set(row) != set(columns):
            extra = sorted(set(row) ^ set(columns))
            raise DataError(
                f"columns differ from the first row's (differing: {extra}); every row needs the same columns",
                path=path,
                row=where[i],
                record_id=row.get("id"),
            )
        if isinstance(row["prompt"], str) != first_prompt_is_text:
            raise DataError(
                "prompt is text in some rows and a message list in others; use one form per dataset",
                path=path,
                row=where[i],
                record_id=row.get("id"),
            )
        if "id" in row:
            if row["id"] in seen_ids:
                raise DataError(
                    f"id {row['id']!r} repeats (first at row {seen_ids[row['id']]})",
                    path=path,
                    row=where[i],
                    record_id=row["id"],
                )
            seen_ids[row["id"]] = where[i]
    import pyarrow as pa

    try:
        if rows:
            dataset = datasets.Dataset.from_list(rows)
        else:
            dataset = datasets.Dataset.from_dict({name: [] for name in columns})
    except (ValueError, TypeError, OverflowError, NotImplementedError, pa.ArrowException) as err:
        # extra columns whose values Arrow cannot hold in one column (mixed types, empty structs, huge ints)
        raise _mixed_types_error(rows, where, path) or DataError(
            f"columns hold values of inconsistent types: {err}", path=path
        ) from err
    report.log()
    return report.attach(dataset)


def _mixed_types_error(rows: list[dict[str, Any]], where: list[int], path: str | None) -> DataError | None:
    """The first column whose values change type between rows, as an error naming the column and both rows."""
    for column in rows[0]:
        first: tuple[type, int] | None = None
        for row, line in zip(rows, where, strict=True):
            value = row.get(column)
            if value is None:
                continue
            kind = float if isinstance(value, int | float) and not isinstance(value, bool) else type(value)
            if first is None:
                first = (kind, line)
            elif kind is not first[0]:
                return DataError(
                    f"column {column!r} is a {type(value).__name__} here but a {first[0].__name__} in row {first[1]}; "
                    "one type per column (convert it, or drop the column)",
                    path=path,
                    row=line,
                    record_id=row.get("id"),
                )
    return None


def swap_pair(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with chosen and rejected (and every paired column) exchanged."""
    out = dict(record)
    for first, second in PAIRED_COLUMNS:
        if first in record and second in record:
            out[first], out[second] = record[second], record[first]
    return out
