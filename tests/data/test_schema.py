"""Record checks: structural problems raise DataError (file, row, problem); content problems are counted drops."""

from __future__ import annotations

import math

import pytest

from cwpo.data import FilterReport, build_dataset, normalise_pair, swap_pair
from cwpo.errors import DataError

GOOD = {"id": "p1", "prompt": "Q?", "chosen": " yes", "rejected": " no"}


def _check(**changes):
    return normalise_pair({**GOOD, **changes}, report=FilterReport(), path="f.jsonl", row=4)


def test_good_record_is_cleaned():
    out = _check(confidence=1, human_label=True, weak_score_chosen=2)
    assert out["confidence"] == 1.0 and isinstance(out["confidence"], float)
    assert out["human_label"] == 1 and out["weak_score_chosen"] == 2.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"confidence": math.nan}, "confidence is NaN"),
        ({"confidence": -0.1}, r"confidence is -0.1, expected a value in \[0, 1\]"),
        ({"confidence": 1.5}, r"confidence is 1.5, expected a value in \[0, 1\]"),
        ({"weight": 2.0}, r"weight is 2.0"),
        ({"confidence": "high"}, "confidence is a str"),
        ({"human_label": 2}, "human_label is 2, expected 0 or 1"),
        ({"human_label": "1"}, "human_label is '1', expected 0 or 1"),
        ({"chosen": 42}, r"chosen is a int \(42\), expected text"),
        ({"prompt": 3.5}, "prompt is a float"),
        ({"prompt": [{"content": "hi"}]}, r"prompt message 0 has no 'role' \(keys: \['content'\]\)"),
        ({"prompt": [{"role": "user", "content": 7}]}, "prompt message 0 'content' is a int"),
        ({"prompt": ["hi"]}, "prompt message 0 is a str"),
        ({"agrees_with_human": "yes"}, "agrees_with_human is 'yes'"),
        ({"weak_score_rejected": math.nan}, "weak_score_rejected is NaN"),
    ],
)
def test_structural_problems_raise(changes, message):
    with pytest.raises(DataError, match=r"f.jsonl, row 4, id 'p1': " + message):
        _check(**changes)


def test_missing_columns_are_named():
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['rejected'\]; columns present: \['chosen', 'id', 'prompt'\]"
    ):
        normalise_pair({"id": "p1", "prompt": "Q", "chosen": "a"}, report=FilterReport())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"prompt": "  "}, "empty_prompt"),
        ({"prompt": []}, "empty_prompt"),
        ({"chosen": ""}, "empty_response"),
        ({"rejected": "\n"}, "empty_response"),
        ({"rejected": " yes"}, "identical_responses"),
    ],
)
def test_content_problems_are_counted_drops(changes, reason):
    report = FilterReport()
    assert normalise_pair({**GOOD, **changes}, report=report, row=4) is None
    assert report.dropped == {reason: 1} and report.examples == {reason: ["p1"]}
    with pytest.raises(DataError, match=f"row 4, id 'p1': {reason}"):
        normalise_pair({**GOOD, **changes}, report=FilterReport(strict=True), row=4)


def test_build_dataset_checks():
    with pytest.raises(DataError, match="no pairs left after filtering"):
        build_dataset([], report=FilterReport(stage="x", n_read=3), path="f.jsonl")
    with pytest.raises(DataError, match="id 'p1' repeats"):
        build_dataset([GOOD, GOOD], report=FilterReport())
    with pytest.raises(DataError, match="text in some rows and a message list in others"):
        build_dataset([GOOD, {**GOOD, "id": "p2", "prompt": [{"role": "user", "content": "x"}]}], report=FilterReport())
    with pytest.raises(DataError, match=r"columns differ from the first row's \(differing: \['confidence'\]\)"):
        build_dataset([GOOD, {**GOOD, "id": "p2", "confidence": 0.5}], report=FilterReport())
    with pytest.raises(DataError, match="column 'extra' is a dict here but a float in row 0; one type per column"):
        build_dataset([{**GOOD, "extra": 1}, {**GOOD, "id": "p2", "extra": {"a": 1}}], report=FilterReport())


def test_swap_pair():
    record = {**GOOD, "weak_score_chosen": 1.0, "weak_score_rejected": 2.0, "confidence": 0.3}
    swapped = swap_pair(record)
    assert (swapped["chosen"], swapped["rejected"]) == (" no", " yes")
    assert (swapped["weak_score_chosen"], swapped["weak_score_rejected"]) == (2.0, 1.0)
    assert swapped["confidence"] == 0.3
