"""Reading rows from jsonl (optionally gzipped), JSON and parquet files; writing pair datasets atomically.

Reading is done line by line (not through ``datasets.load_dataset("json")``) so that a malformed line or
non-UTF-8 bytes are reported with the file and the line number, as :class:`cwpo.errors.DataError`.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cwpo.data.report import FilterReport
from cwpo.errors import DataError
from cwpo.io import atomic_path, write_json

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def is_data_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file type :func:`iter_rows` reads."""
    return _suffix(Path(path)) in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES)


def _iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    if opener is open and _is_gzip(path):
        raise DataError(f"is gzip-compressed but named {path.suffix}; rename it to {path.name}.gz", path=str(path))
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"not valid UTF-8 (byte {err.start} of the line: {raw[err.start : err.start + 4]!r})",
                        path=str(path),
                        row=line_no,
                    ) from None
                if not line.strip():
                    continue
                try:
                    value = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"malformed JSON ({err.msg} at column {err.colno})", path=str(path), row=line_no
                    ) from None
                if not isinstance(value, dict):
                    raise DataError(
                        f"expected a JSON object per line, got {type(value).__name__}", path=str(path), row=line_no
                    )
                yield line_no, value
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read the file: {err}", path=str(path)) from None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _iter_json_array(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    if opener is open and _is_gzip(path):
        raise DataError(f"is gzip-compressed but named {path.suffix}; rename it to {path.name}.gz", path=str(path))
    try:
        with opener(path, "rb") as f:
            data = f.read()
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"not valid UTF-8 (byte {err.start} of the file)", path=str(path)) from None
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON ({err.msg})", path=str(path), row=err.lineno - 1) from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read the file: {err}", path=str(path)) from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(f"expected a JSON array of objects, got {type(value).__name__}", path=str(path))
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"expected a JSON object, got {type(item).__name__}", path=str(path), row=i)
        yield i, item


def _looks_like_json_array(path: Path) -> bool:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(64).lstrip()
    except (OSError, EOFError, zlib.error):
        return False
    if head.startswith(b"["):
        return True
    if not head.startswith(b"{"):
        return False
    # ``{"data": [...]}`` is one JSON document, a jsonl file one object per line: only the first parses whole.
    try:
        with opener(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except (ValueError, OSError, EOFError, zlib.error):
        return False
    return isinstance(value, dict) and isinstance(value.get("data"), list)


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"not a readable parquet file: {err}", path=str(path)) from None
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield row, record
                row += 1
    except (OSError, pa.ArrowException, UnicodeDecodeError) as err:
        raise DataError(f"cannot read rows (near row {row}): {err}", path=str(path), row=row) from None


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` for each row of a jsonl(.gz), JSON-array or parquet file.

    ``row_number`` is the 0-based line number for jsonl (blank lines are skipped but counted) and the
    0-based row for parquet and JSON arrays.

    Raises:
        DataError: the file is missing, of an unknown type, not UTF-8, or holds malformed JSON.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if is_data_file(p))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise DataError(
            f"is a folder, not a data file{hint}; give the path of one .jsonl/.parquet file", path=str(path)
        )
    if not path.is_file():
        raise DataError("no such file", path=str(path))
    suffix = _suffix(path)
    if suffix in PARQUET_SUFFIXES:
        return _iter_parquet(path)
    if suffix in JSONL_SUFFIXES:
        if suffix in (".json", ".json.gz") and _looks_like_json_array(path):
            return _iter_json_array(path)
        return _iter_json_lines(path)
    raise DataError(
        f"unknown file type {suffix!r}; expected one of {[*JSONL_SUFFIXES, *PARQUET_SUFFIXES]}", path=str(path)
    )


def report_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_pairs` puts the :class:`FilterReport` of ``path``."""
    return Path(f"{path}.report.json")


def save_pairs(dataset, path: str | os.PathLike) -> Path:
    """Write a pair dataset to jsonl (``.jsonl``, ``.jsonl.gz``) or parquet, atomically.

    The dataset's :class:`FilterReport`, when one is attached, is written beside it as
    ``<path>.report.json``.
    """
    path = Path(path)
    suffix = _suffix(path)
    with atomic_path(path) as tmp:
        if suffix in PARQUET_SUFFIXES:
            dataset.to_parquet(str(tmp))
        elif suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
            opener = gzip.open if suffix.endswith(".gz") else open
            with opener(tmp, "wt", encoding="utf-8") as f:
                for record in dataset:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            raise DataError(f"cannot write {suffix!r}; use .jsonl, .jsonl.gz or .parquet", path=str(path))
    report = FilterReport.from_dataset(dataset)
    if report is not None:
        write_json(report_path(path), report.to_dict())
    return path
