"""UltraFeedback binarized loader, on a fixture in the published schema (tests/data/fixtures)."""

from __future__ import annotations

import json

import pytest

from cwpo.data import get_filter_report, load_ultrafeedback
from cwpo.errors import DataError

FILE = "ultrafeedback_binarized_test_prefs.jsonl"


def test_fixture_rows(fixtures):
    data = load_ultrafeedback("test_prefs", path=fixtures / FILE)
    report = get_filter_report(data)
    assert (report.n_read, len(data)) == (5, 3)
    assert report.dropped == {"tie": 1, "no_shared_prompt": 1}
    assert data["id"] == ["ultrafeedback-test_prefs-0", "ultrafeedback-test_prefs-1", "ultrafeedback-test_prefs-4"]
    first = data[0]
    assert first["prompt"] == [{"role": "user", "content": "What is the boiling point of water at sea level?"}]
    assert first["chosen"] == "At sea level, water boils at 100 °C (212 °F)."
    assert first["rejected"] == "Water boils at 90 degrees."
    assert (first["score_chosen"], first["score_rejected"], first["prompt_id"]) == (9.0, 3.0, "ufb-0001")
    assert first["human_label"] == 1 and first["source"] == "ultrafeedback"
    multi = data[1]
    assert [m["content"] for m in multi["prompt"]] == ["Name a prime number.", "7", "Another one?"]
    assert multi["chosen"] == "11 is also prime."
    assert data[2]["chosen"] == "ありがとう (arigatō)."


def test_folder_layout_text_prompts_and_ties(fixtures, tmp_path):
    (tmp_path / "test_prefs.jsonl").write_text((fixtures / FILE).read_text())
    data = load_ultrafeedback("test_prefs", path=tmp_path, prompt_as_messages=False, drop_ties=False)
    assert len(data) == 4
    assert data["prompt"][0] == "What is the boiling point of water at sea level?"
    assert data["prompt"][1] == "Another one?"


def test_parquet(fixtures, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (fixtures / FILE).read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test_prefs-00000-of-00001.parquet")
    data = load_ultrafeedback("test_prefs", path=tmp_path)
    assert len(data) == 3 and data[0]["chosen"] == "At sea level, water boils at 100 °C (212 °F)."


def test_conversation_must_end_with_the_reply(tmp_path):
    row = {"prompt": "x", "chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "x"}],
           "score_chosen": 1.0, "score_rejected": 0.0}  # fmt: skip
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="bad.jsonl, row 0.*chosen must end with the assistant's reply"):
        load_ultrafeedback("test_prefs", path=path)
