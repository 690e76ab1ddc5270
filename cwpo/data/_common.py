"""What every source loader shares: reading rows from the hub or a local file, and turning them into pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from cwpo.data.files import iter_rows
from cwpo.data.report import FilterReport
from cwpo.data.schema import build_dataset, normalise_pair
from cwpo.errors import DataError

# A parser turns one raw row into a schema record (without ``id``), or returns a drop reason.
Parser = Callable[[dict[str, Any]], "dict[str, Any] | str"]


def hub_rows(hub_name: str, **kwargs) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of ``datasets.load_dataset(hub_name, **kwargs)`` (needs hub access or the hub cache).

    ``kwargs`` may hold ``name`` (the config, e.g. ``"comparisons"``), ``data_dir`` and ``split``.
    """
    import datasets

    yield from enumerate(datasets.load_dataset(hub_name, **kwargs))


def find_local_file(path: Path, split: str, patterns: Iterable[str]) -> Path:
    """``path`` itself when it is a file, else the first file under it matching a pattern (``{split}``)."""
    if path.is_file():
        return path
    tried = []
    for pattern in patterns:
        pattern = pattern.format(split=split)
        tried.append(pattern)
        matches = sorted(path.glob(pattern))
        if matches:
            return matches[0]
    raise DataError(f"no file for split {split!r}; looked for {tried}", path=str(path))


def field(raw: dict[str, Any], name: str, kind: type | tuple[type, ...], *, what: str | None = None) -> Any:
    """``raw[name]`` checked to be of ``kind``; a :class:`DataError` (file and row added by the caller) if not."""
    if not isinstance(raw, dict):
        raise DataError(f"expected a record, got {type(raw).__name__}")
    if name not in raw:
        raise DataError(f"missing column {name!r}; columns present: {sorted(map(str, raw))}")
    value = raw[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise DataError(f"{what or name} is a bool, expected {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise DataError(f"{what or name} is a {type(value).__name__} ({value!r:.40}), expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "text", int: "an integer", float: "a number", dict: "an object", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def collect_pairs(
    rows: Iterable[tuple[int, dict[str, Any]]],
    parse: Parser,
    *,
    stage: str,
    where: str,
    id_prefix: str,
    strict: bool = False,
    limit: int | None = None,
    extra: dict[str, Any] | None = None,
):
    """Parse, check and collect rows into a pair dataset with its :class:`FilterReport`.

    Args:
        rows: ``(row_number, raw_row)`` pairs.
        parse: raw row -> record or drop reason; may raise :class:`DataError` (file and row get added).
        stage: the report's name.
        where: the file (or hub name) for error messages.
        id_prefix: ids are ``"<id_prefix>-<row>"``.
        strict: raise instead of counting drops.
        limit: read at most this many rows.
        extra: columns added to every record (``human_label``, ``source``).
    """
    report = FilterReport(stage=stage, strict=strict)
    records, lines = [], []
    for row, raw in rows:
        if limit is not None and report.n_read >= limit:
            break
        report.n_read += 1
        record_id = f"{id_prefix}-{row}"
        try:
            parsed = parse(raw)
        except DataError as err:
            raise DataError(err.problem, path=where, row=row, record_id=record_id) from None
        if isinstance(parsed, str):
            report.drop(parsed, path=where, row=row, record_id=record_id)
            continue
        record = {"id": record_id, **parsed, **(extra or {})}
        cleaned = normalise_pair(record, report=report, path=where, row=row)
        if cleaned is not None:
            records.append(cleaned)
            lines.append(row)
    return build_dataset(records, report=report, path=where, rows_in_file=lines, keep_duplicates=False)


def local_or_hub_rows(
    path, split: str, patterns: Iterable[str], hub_name: str, **hub_kwargs
) -> tuple[Iterator[tuple[int, dict[str, Any]]], str]:
    """Rows from a local file (``path``, or a file under it for ``split``) or, with no path, from the hub.

    Returns:
        The rows and where they come from (the file, or ``hub:<name>/<split>``) for messages.
    """
    if path is None:
        return hub_rows(hub_name, split=split, **hub_kwargs), f"hub:{hub_name}/{split}"
    file = find_local_file(Path(path), split, patterns)
    return iter_rows(file), str(file)
