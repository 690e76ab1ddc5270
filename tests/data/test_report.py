"""FilterReport: counts by reason, merged across stages, stored in the dataset's info and beside saved files."""

from __future__ import annotations

import json

import datasets

from cwpo.data import FilterReport, get_filter_report, load_synthetic, save_pairs


def test_counts_merge_and_summary():
    loader = FilterReport(stage="load", n_read=10, n_kept=8)
    loader.drop("empty_response", record_id="a")
    loader.drop("empty_response", row=3)
    tokens = FilterReport(stage="tokenize", n_read=8, n_kept=7)
    tokens.drop("over_budget", record_id="b")
    tokens.note("truncated", 2)
    merged = loader.merge(tokens)
    assert (merged.n_read, merged.n_kept, merged.n_dropped) == (10, 7, 3)
    assert merged.dropped == {"empty_response": 2, "over_budget": 1}
    assert merged.examples == {"empty_response": ["a", "row 3"], "over_budget": ["b"]}
    assert merged.summary() == (
        "load + tokenize: kept 7 of 10 (dropped: empty_response 2, over_budget 1) (changed: truncated 2)"
    )
    assert FilterReport.from_dict(merged.to_dict()) == merged


def test_attached_to_info_and_survives_select_and_disk(tmp_path):
    data = load_synthetic(10)
    report = get_filter_report(data)
    assert report.stage.startswith("synthetic train") and report.n_kept == 10
    assert get_filter_report(data.select(range(3))) == report
    data.save_to_disk(str(tmp_path / "saved"))
    assert get_filter_report(datasets.load_from_disk(str(tmp_path / "saved"))) == report
    save_pairs(data, tmp_path / "pairs.jsonl")
    assert json.loads((tmp_path / "pairs.jsonl.report.json").read_text())["n_kept"] == 10


def test_dataset_without_report():
    plain = datasets.Dataset.from_list([{"a": 1}, {"a": 2}])
    assert FilterReport.from_dataset(plain) is None
    assert get_filter_report(plain).n_kept == 2
