"""Weak labels from scores: Eq. 6 order, Eq. 8 confidence, human agreement, paired columns swapped together."""

from __future__ import annotations

import math

import pytest

from cwpo.annotation.labels import label_pairs


def _record(i, **extra):
    return {"id": f"p{i}", "prompt": "q", "chosen": f"a{i}", "rejected": f"b{i}", "human_label": 1, **extra}


def test_pairs_are_ordered_by_the_weak_scores_and_get_cw_confidence():
    """Pair 0 keeps its order (2 > 0.5, Δ = 1.5); pair 1 is swapped (Δ = 3); pair 2 is a tie and keeps its order.

    c = 2σ(Δ) - 1: 2σ(1.5) - 1 = 0.635149..., 2σ(3) - 1 = 0.905148..., 0 for the tie.
    """
    records = [
        _record(0, gold_reward_chosen=1.0, gold_reward_rejected=0.0),
        _record(1, gold_reward_chosen=5.0, gold_reward_rejected=-5.0),
        _record(2, gold_reward_chosen=0.0, gold_reward_rejected=0.0),
    ]
    out = label_pairs(records, [(2.0, 0.5), (-1.0, 2.0), (0.25, 0.25)])
    assert [(r["chosen"], r["rejected"]) for r in out] == [("a0", "b0"), ("b1", "a1"), ("a2", "b2")]
    assert [(r["weak_score_chosen"], r["weak_score_rejected"]) for r in out] == [(2.0, 0.5), (2.0, -1.0), (0.25, 0.25)]
    assert (out[1]["gold_reward_chosen"], out[1]["gold_reward_rejected"]) == (-5.0, 5.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert [r["confidence"] for r in out] == pytest.approx([2 * sigmoid(1.5) - 1, 2 * sigmoid(3.0) - 1, 0.0])
    assert [r["human_label"] for r in out] == [1, 0, 1]
    assert [r["agrees_with_human"] for r in out] == [True, False, True]
    assert records[1]["chosen"] == "a1"  # inputs untouched


def test_a_human_label_of_zero_becomes_agreement_when_the_weak_order_swaps():
    records = [_record(0, human_label=0), _record(1, human_label=None)]
    out = label_pairs(records, [(0.0, 1.0), (0.0, 1.0)])
    assert out[0]["human_label"] == 1 and out[0]["agrees_with_human"] is True
    assert out[1]["human_label"] is None and out[1]["agrees_with_human"] is None


def test_records_without_human_labels_get_no_agreement_column():
    records = [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    out = label_pairs(records, [(1.0, 0.0)])
    assert "human_label" not in out[0] and "agrees_with_human" not in out[0]


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("uniform", [1.0, 1.0, 1.0]),
        ("rank", [1 / 3, 2 / 3, 1.0]),
        ("minmax", [0.0, 0.5, 1.0]),
        ("margin", [1.0, 2.0, 3.0]),
    ],
)
def test_dataset_relative_schemes_see_the_whole_dataset(scheme, expected):
    records = [_record(i) for i in range(3)]
    out = label_pairs(records, [(1.0, 0.0), (0.0, 2.0), (3.0, 0.0)], confidence=scheme)
    assert [r["confidence"] for r in out] == pytest.approx(expected)
