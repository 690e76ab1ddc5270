"""The annotator report: exact accuracies overall, by confidence decile and for the top-N % on hand-built records."""

from __future__ import annotations

import json

import pytest

from cwpo.annotation.report import annotator_report, report_markdown, write_report


def _records(confidences, agrees):
    return [
        {"id": f"r{i}", "confidence": c, "human_label": int(a), "agrees_with_human": bool(a)}
        for i, (c, a) in enumerate(zip(confidences, agrees, strict=True))
    ]


@pytest.fixture
def twenty_records():
    """20 records, confidence 0.00, 0.05, ..., 0.95 (record i has 0.05·i), in shuffled input order.

    The weak label agrees with the human on records i = 0, 3, 6, ..., 18 (every third: 7 records) and on all of
    i >= 14 (14, 16, 17, 19 added: 11 agreeing records in all).
    """
    agree = {i for i in range(0, 20, 3)} | set(range(14, 20))
    order = [7, 19, 0, 12, 3, 15, 8, 1, 18, 4, 11, 16, 2, 9, 13, 5, 17, 10, 6, 14]
    return _records([0.05 * i for i in order], [i in agree for i in order])


def test_overall_decile_and_top_n_values_are_exact(twenty_records):
    """Deciles hold 2 records each: records (0,1) (2,3) ... (18,19) by confidence.

    Agreeing per decile: (0,1)->1, (2,3)->1, (4,5)->0, (6,7)->1, (8,9)->1, (10,11)->0, (12,13)->1, (14,15)->2,
    (16,17)->2, (18,19)->2. Top 10 % = ceil(2) = records 18, 19 (2/2); top 20 % = 16..19 (4/4); top 30 % = 14..19
    (6/6); top 40 % = 12..19 (7/8: 13 disagrees); top 50 % = 10..19 (7/10); top 75 % = 15 records 5..19 (agreeing:
    6, 9, 12, 14..19 = 9); top 100 % = 11/20.
    """
    report = annotator_report(twenty_records)
    assert report["n_pairs"] == 20 and report["n_labelled"] == 20
    assert report["accuracy"] == pytest.approx(11 / 20)
    assert [b["n"] for b in report["bins"]] == [2] * 10
    assert [b["accuracy"] for b in report["bins"]] == [0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert report["bins"][0]["confidence_min"] == 0.0
    assert report["bins"][9]["confidence_max"] == pytest.approx(0.95)
    top = {t["percent"]: (t["n"], t["accuracy"]) for t in report["top_n"]}
    assert top == {
        10: (2, 1.0),
        20: (4, 1.0),
        30: (6, 1.0),
        40: (8, pytest.approx(7 / 8)),
        50: (10, pytest.approx(7 / 10)),
        75: (15, pytest.approx(9 / 15)),
        100: (20, pytest.approx(11 / 20)),
    }


def test_uneven_bins_ties_and_unlabelled_records():
    """7 labelled records in 10 bins: bin b holds ranks floor(b·7/10) .. floor((b+1)·7/10)-1, so bins 1, 4, 7 are
    empty (accuracy None). Ties in confidence rank by input position. One record without a label is skipped.
    Top 10 % of 7 keeps ceil(0.7) = 1 record: the first of the two tied at 0.9 (input index 1, disagreeing).
    """
    records = _records([0.1, 0.9, 0.9, 0.2, 0.3, 0.4, 0.5], [1, 0, 1, 1, 0, 1, 1])
    records.append({"id": "unlabelled", "confidence": 0.99, "human_label": None})
    report = annotator_report(records)
    assert report["n_pairs"] == 8 and report["n_labelled"] == 7
    assert [b["n"] for b in report["bins"]] == [0, 1, 1, 0, 1, 1, 0, 1, 1, 1]
    assert report["bins"][0]["accuracy"] is None
    top = {t["percent"]: (t["n"], t["accuracy"]) for t in report["top_n"]}
    assert top[10] == (1, 0.0)
    assert top[20] == (2, 0.5)


def test_records_without_confidence_rank_by_margin():
    """WS-DPO style records carry weak scores only: the margin |chosen - rejected| ranks them."""
    records = [
        {"weak_score_chosen": 3.0, "weak_score_rejected": 0.0, "human_label": 1},
        {"weak_score_chosen": 0.2, "weak_score_rejected": 0.1, "human_label": 0},
    ]
    report = annotator_report(records, top_n=(50,))
    assert report["top_n"] == [{"percent": 50, "n": 1, "min_confidence": 3.0, "accuracy": 1.0}]


def test_write_report_files(tmp_path, twenty_records):
    report = write_report(twenty_records, tmp_path, title="hand-built")
    assert json.loads((tmp_path / "annotator_report.json").read_text())["accuracy"] == pytest.approx(0.55)
    markdown = (tmp_path / "annotator_report.md").read_text()
    assert "**55.0 %**" in markdown and "| 30 | 6 |" in markdown
    assert (tmp_path / "annotator_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["paths"]) == {"markdown", "json", "png"}
    assert report_markdown(annotator_report([])).startswith("# Weak annotator")
