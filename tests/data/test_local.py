"""Local files with a column mapping; files in the record schema (what annotate writes) round-trip."""

from __future__ import annotations

import json

import pytest

from cwpo.data import get_filter_report, load_local, load_synthetic, save_pairs
from cwpo.errors import DataError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_column_mapping(tmp_path):
    path = _write(tmp_path / "prefs.jsonl", [
        {"question": "Capital of France?", "good": " Paris.", "bad": " Lyon.", "annotator": "a1"},
        {"question": "2+2?", "good": " 4", "bad": " 4"},
    ])  # fmt: skip
    data = load_local(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"}, source="mine")
    assert len(data) == 1 and get_filter_report(data).dropped == {"identical_responses": 1}
    assert data[0] == {"id": "prefs-0", "prompt": "Capital of France?", "chosen": " Paris.", "rejected": " Lyon.",
                       "annotator": "a1", "source": "mine"}  # fmt: skip


def test_missing_mapped_column_names_what_exists(tmp_path):
    path = _write(tmp_path / "prefs.jsonl", [{"question": "q", "good": "a", "worse": "b"}])
    with pytest.raises(DataError, match=r"prefs.jsonl, row 0: missing column 'bad' \(for 'rejected'\); columns "
                                        r"present: \['good', 'question', 'worse'\]"):  # fmt: skip
        load_local(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    with pytest.raises(
        DataError,
        match=r"row 0: missing column\(s\) \['prompt', 'chosen', 'rejected'\] \(map other "
        r"names with columns=\{...\}\); columns present: \['good', 'question', 'worse'\]",
    ):
        load_local(path)


def test_annotated_file_round_trip(tmp_path):
    data = load_synthetic(20)
    data = data.add_column("confidence", [i / 20 for i in range(20)])
    data = data.add_column("weak_score_chosen", [1.0] * 20).add_column("weak_score_rejected", [0.5] * 20)
    for suffix in ("jsonl", "jsonl.gz", "parquet"):
        path = save_pairs(data, tmp_path / f"d_u.{suffix}")
        again = load_local(path)
        assert again.to_list() == data.to_list()
        assert (tmp_path / f"d_u.{suffix}.report.json").is_file()
    assert load_local(tmp_path / "d_u.jsonl")["confidence"][3] == 0.15


def test_message_prompts_and_limit(tmp_path):
    path = _write(tmp_path / "chat.jsonl", [
        {"id": "a", "prompt": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "bye"},
        {"id": "b", "prompt": [{"role": "user", "content": "yo"}], "chosen": "hey", "rejected": "no"},
    ])  # fmt: skip
    data = load_local(path, limit=1)
    assert data["id"] == ["a"] and data[0]["prompt"] == [{"role": "user", "content": "hi"}]
