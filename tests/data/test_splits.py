"""Splits: exact, seed-stable D_L / D_U and holdouts; mixtures of sources; flipped labels (appendix J.8)."""

from __future__ import annotations

import pytest

from cwpo.data import (
    flip_labels,
    get_filter_report,
    hash_split,
    load_synthetic,
    mix_sources,
    split_holdout,
    split_labelled,
)
from cwpo.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def synthetic_train():
    return load_synthetic()


def test_d_l_d_u_on_real_hh(hh_test):
    """2,303 pairs, ratio 0.3: 691 labelled, 1,612 unlabelled; membership pinned for seed 0."""
    d_l, d_u = split_labelled(hh_test, 0.3, seed=0)
    assert (len(d_l), len(d_u)) == (691, 1612)
    assert d_l["id"][:3] == ["hh-rlhf-harmless-base-test-3", "hh-rlhf-harmless-base-test-7",
                             "hh-rlhf-harmless-base-test-9"]  # fmt: skip
    assert d_u["id"][:3] == ["hh-rlhf-harmless-base-test-0", "hh-rlhf-harmless-base-test-1",
                             "hh-rlhf-harmless-base-test-2"]  # fmt: skip
    assert not set(d_l["id"]) & set(d_u["id"])
    other, _ = split_labelled(hh_test, 0.3, seed=1)
    assert len(other) == 691 and other["id"][:2] == ["hh-rlhf-harmless-base-test-0", "hh-rlhf-harmless-base-test-1"]


def test_synthetic_split_and_holdout(synthetic_train):
    d_l, d_u = split_labelled(synthetic_train, 0.3, seed=0)
    assert (len(d_l), len(d_u)) == (900, 2100)
    assert d_l["id"][:4] == ["synthetic-train-0", "synthetic-train-1", "synthetic-train-5", "synthetic-train-7"]
    held, rest = split_holdout(d_l, 0.1, seed=0)
    assert (len(held), len(rest)) == (90, 810)
    assert held["id"][:3] == ["synthetic-train-25", "synthetic-train-42", "synthetic-train-82"]
    report = get_filter_report(d_l)
    assert report.n_kept == 900 and report.notes == {"split_off_d_l": 2100}


def test_membership_depends_on_ids_not_order(synthetic_train):
    """Reversing the rows changes nothing about which ids are labelled, and both parts keep input order."""
    d_l, _ = split_labelled(synthetic_train, 0.3, seed=0)
    reversed_rows = synthetic_train.select(range(len(synthetic_train) - 1, -1, -1))
    d_l_reversed, _ = split_labelled(reversed_rows, 0.3, seed=0)
    assert sorted(d_l["id"]) == sorted(d_l_reversed["id"])
    assert d_l_reversed["id"] == list(reversed(d_l["id"]))


def test_split_errors(synthetic_train):
    with pytest.raises(ConfigError):
        split_labelled(synthetic_train, 1.0)
    with pytest.raises(ConfigError):
        hash_split(synthetic_train, 1.5)
    with pytest.raises(DataError, match="D_L split is empty"):
        split_labelled(synthetic_train.select(range(1)), 0.3)


def test_mixture_80_20():
    harmless, helpful = load_synthetic(100, split="a"), load_synthetic(100, split="b")
    mixture = mix_sources([harmless, helpful], [0.8, 0.2], names=["harmless", "helpful"], seed=0)
    # the largest mixture the sources allow at 80/20: 100 / 0.8 = 125 pairs, 100 + 25
    assert len(mixture) == 125
    assert mixture["source"].count("harmless") == 100 and mixture["source"].count("helpful") == 25
    fixed = mix_sources([harmless, helpful], [0.8, 0.2], n_pairs=50, seed=0)
    assert fixed["source"] == ["synthetic"] * 50  # without names, the sources' own column stays
    assert [i.split("-")[1] for i in fixed["id"]] == ["a"] * 40 + ["b"] * 10
    unnamed = [d.remove_columns("source") for d in (harmless, helpful)]
    assert mix_sources(unnamed, [0.8, 0.2], n_pairs=50)["source"] == ["source-0"] * 40 + ["source-1"] * 10
    again = mix_sources([harmless, helpful], [0.8, 0.2], n_pairs=50, seed=0)
    assert again["id"] == fixed["id"]
    with pytest.raises(ConfigError, match="fewer than"):
        mix_sources([harmless, helpful], [0.5, 0.5], n_pairs=250)


def test_flip_labels_random(synthetic_train):
    d_l, _ = split_labelled(synthetic_train, 0.3, seed=0)
    flipped = flip_labels(d_l, 0.2, seed=0)
    marks = flipped["label_flipped"]
    assert sum(marks) == 180
    assert [i for i, m in enumerate(marks) if m][:5] == [1, 13, 14, 36, 47]
    for i in (1, 2):
        original, row = d_l[i], flipped[i]
        if row["label_flipped"]:
            assert (row["chosen"], row["rejected"]) == (original["rejected"], original["chosen"])
            assert row["gold_reward_chosen"] == original["gold_reward_rejected"]
        else:
            assert row["chosen"] == original["chosen"]
    assert get_filter_report(flipped).notes["label_flipped"] == 180
    assert "label_flipped" not in get_filter_report(d_l).notes  # the input's report is not changed


def test_flip_labels_largest_margin(synthetic_train):
    data = synthetic_train.select(range(200))
    flipped = flip_labels(data, 0.1, strategy="largest_margin")
    margins = [c - r for c, r in zip(data["gold_reward_chosen"], data["gold_reward_rejected"], strict=True)]
    threshold = sorted(margins, reverse=True)[19]
    for margin, mark in zip(margins, flipped["label_flipped"], strict=True):
        if mark:
            assert margin >= threshold
    assert sum(flipped["label_flipped"]) == 20
    with pytest.raises(ConfigError, match="score columns"):
        flip_labels(data.remove_columns(["gold_reward_chosen", "gold_reward_rejected"]), 0.1, strategy="largest_margin")
