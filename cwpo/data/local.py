"""Loading pairs from any local jsonl(.gz) / JSON / parquet file, with a column mapping.

A file that is already in the record schema (for example one written by :func:`cwpo.data.save_pairs` or by
``annotate``) loads with no options; other files name their columns, e.g.
``load_local("prefs.jsonl", columns={"prompt": "question", "chosen": "good", "rejected": "bad"})``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cwpo.data.files import iter_rows
from cwpo.data.report import FilterReport
from cwpo.data.schema import OVERLAP_HINT, REQUIRED_COLUMNS, build_dataset, normalise_pair, overlap_problem
from cwpo.errors import ConfigError, DataError


def _file_stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def load_local(
    path: str | os.PathLike,
    *,
    columns: dict[str, str] | None = None,
    source: str | None = None,
    id_prefix: str | None = None,
    strict: bool = False,
    limit: int | None = None,
    keep_duplicates: bool = False,
    allow_overlap: bool = False,
):
    """Load preference pairs from a local file.

    Args:
        path: a ``.jsonl``, ``.jsonl.gz``, ``.json`` or ``.parquet`` file.
        columns: schema column -> file column (``{"prompt": "question"}``); unmapped columns keep their names
            and pass through.
        source: written to a ``source`` column when given (mixtures).
        id_prefix: ids for rows without an ``id`` column are ``"<id_prefix>-<row>"`` (default: the file's stem).
        strict: raise :class:`DataError` on rows that would otherwise be dropped and counted.
        limit: read at most this many rows (quick looks, tests).
        keep_duplicates: keep a pair equal to an earlier one (default: dropped and counted as ``duplicate``).
        allow_overlap: keep pairs whose response repeats the prompt, holds a ``"\n\nHuman:"`` turn, or that the
            prompt already contains (noted as ``prompt_overlap``); by default such a row is refused: it is a raw
            HH-RLHF record or a prompt that gives the answer away.

    Returns:
        A :class:`datasets.Dataset` in the record schema, with its :class:`FilterReport` attached.

    Raises:
        DataError: the file is unreadable, a mapped column is missing, a row breaks the schema, or a response
            overlaps its prompt (without ``allow_overlap``).
    """
    path = Path(path)
    columns = dict(columns or {})
    for target, file_column in columns.items():
        if not isinstance(target, str) or not isinstance(file_column, str):
            raise ConfigError(f"columns must map schema names to file column names (strings), got {columns!r}")
    renames = {file_column: target for target, file_column in columns.items()}
    prefix = id_prefix or _file_stem(path)
    report = FilterReport(stage=f"local {path}", strict=strict)
    records, lines = [], []
    for row, raw in iter_rows(path):
        if limit is not None and report.n_read >= limit:
            break
        report.n_read += 1
        missing = [file_column for file_column in renames if file_column not in raw]
        if missing:
            what = ", ".join(f"{name!r} (for {renames[name]!r})" for name in missing)
            raise DataError(f"missing column {what}; columns present: {sorted(map(str, raw))}", path=str(path), row=row)
        record: dict[str, Any] = {renames.get(key, key): value for key, value in raw.items()}
        absent = [name for name in REQUIRED_COLUMNS if name not in record]
        if absent:
            raise DataError(
                f"missing column(s) {absent} (map other names with columns={{...}}); columns present: "
                f"{sorted(map(str, raw))}",
                path=str(path),
                row=row,
            )
        if "id" not in record or record["id"] is None:
            record["id"] = f"{prefix}-{row}"
        if source is not None:
            record["source"] = source
        cleaned = normalise_pair(record, report=report, path=str(path), row=row)
        if cleaned is None:
            continue
        problem = overlap_problem(cleaned)
        if problem is not None:
            if not allow_overlap:
                raise DataError(f"{problem}; {OVERLAP_HINT}", path=str(path), row=row, record_id=cleaned.get("id"))
            report.note("prompt_overlap")
        records.append(cleaned)
        lines.append(row)
    return build_dataset(records, report=report, path=str(path), rows_in_file=lines, keep_duplicates=keep_duplicates)
