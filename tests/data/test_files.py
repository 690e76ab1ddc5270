"""Reading rows: jsonl(.gz), JSON arrays and parquet, with file and line named on every failure."""

from __future__ import annotations

import gzip
import json

import pytest

from cwpo.data import iter_rows
from cwpo.errors import DataError


def test_jsonl_gz_and_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"x": 1}\n\n{"x": 2}\n')
    assert list(iter_rows(path)) == [(0, {"x": 1}), (2, {"x": 2})]


def test_json_array(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"x": 1}, {"x": 2}]))
    assert list(iter_rows(path)) == [(0, {"x": 1}), (1, {"x": 2})]


def test_malformed_json_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"x": 1}\n{"x": \n')
    with pytest.raises(DataError, match=r"a.jsonl, row 1: malformed JSON \(Expecting value at column 7\)"):
        list(iter_rows(path))


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"x": "ok"}\n{"x": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"a.jsonl, row 1: not valid UTF-8 \(byte 10"):
        list(iter_rows(path))


def test_not_an_object_unknown_type_missing_and_broken_files(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="row 0: expected a JSON object per line, got list"):
        list(iter_rows(path))
    with pytest.raises(DataError, match="unknown file type '.csv'"):
        (tmp_path / "a.csv").write_text("x")
        iter_rows(tmp_path / "a.csv")
    with pytest.raises(DataError, match="no such file"):
        iter_rows(tmp_path / "missing.jsonl")
    (tmp_path / "b.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="b.jsonl.gz: cannot read the file"):
        list(iter_rows(tmp_path / "b.jsonl.gz"))
    (tmp_path / "c.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="c.parquet: not a readable parquet file"):
        list(iter_rows(tmp_path / "c.parquet"))
