"""Paired comparisons pooled over seeds, and the report's alignment sections and results.json fields."""

from __future__ import annotations

import json

import pytest

from cwpo.evaluation.comparisons import compare, default_pairs, paired_bootstrap, significance_sentence
from cwpo.evaluation.report import build_report


def test_bootstrap_finds_a_clear_difference_and_not_a_null_one():
    clear = paired_bootstrap([1.0, 1.2, 0.8, 1.1, 0.9] * 40, n_resamples=2000)
    assert clear["diff"] == pytest.approx(1.0) and clear["ci_low"] > 0.9 and clear["p"] < 0.001
    null = paired_bootstrap([1.0, -1.0] * 50, n_resamples=2000)
    assert null["diff"] == pytest.approx(0.0) and null["ci_low"] < 0 < null["ci_high"] and null["p"] > 0.5


def _row(method, seed, rewards, sft):
    outcome = [(a > b) - (a < b) for a, b in zip(rewards, sft, strict=True)]
    return {"method": method, "family": method, "objective": "DPO", "seed": seed, "n": len(rewards), "gra": 50.0,
            "ties_pct": 0.0, "wins": outcome.count(1), "ties": outcome.count(0), "losses": outcome.count(-1),
            "mean_length": 5.0, "sft_mean_length": 4.0, "eos_rate": 1.0, "sft_eos_rate": 1.0,
            "per_prompt": {"outcome": outcome, "reward": rewards, "sft_reward": sft}}  # fmt: skip


def test_comparison_pairs_by_seed_and_prompt():
    # a beats b by exactly 1 on every prompt of both seeds; GRA: a wins 3 of 4 prompts per seed, b 1 of 4
    sft = [0.0, 0.0, 0.0, 0.0]
    rows = [_row("cw-dpo", s, [1.0, 1.0, 1.0, -1.0], sft) for s in (0, 1)]
    rows += [_row("human", s, [0.0, 0.0, 0.0, -2.0], sft) for s in (0, 1)]
    gold = compare(rows, "cw-dpo", "human", "gold_reward", n_resamples=500)
    assert gold["diff"] == pytest.approx(1.0) and gold["n"] == 8 and gold["seeds"] == [0, 1]
    gra = compare(rows, "cw-dpo", "human", "gra", n_resamples=500)
    assert gra["diff"] == pytest.approx(75.0)
    assert "cw-dpo > human" in significance_sentence([gold])


def test_default_pairs_are_every_method_against_human_and_cw_dpo_against_its_baselines():
    methods = ["human", "human-100", "ws-dpo", "dpo", "cw-dpo", "top-30"]
    pairs = default_pairs(methods)
    assert pairs[:5] == [(m, "human") for m in methods[1:]]
    assert pairs[5:] == [("cw-dpo", "ws-dpo"), ("cw-dpo", "dpo"), ("cw-dpo", "human-100"), ("cw-dpo", "top-30")]


def test_report_writes_rows_and_comparisons(tmp_path):
    sft = [0.0] * 6
    rows = [_row("human", s, [1.0, 0.0, 2.0, -1.0, 1.0, 0.5], sft) for s in (0, 1)]
    rows += [_row("cw-dpo", s, [1.5, 0.0, 2.0, -0.5, 1.0, 1.0], sft) for s in (0, 1)]
    annotated = [{"chosen": " a b", "rejected": " c", "confidence": c / 10, "human_label": c % 2,
                  "gold_reward_chosen": float(c % 3), "gold_reward_rejected": 1.0} for c in range(10)]  # fmt: skip
    paths = build_report(rows, tmp_path, annotated_records=annotated)
    data = json.loads(paths["json"].read_text())
    row = data["rows"][0]
    for key in ("method", "seed", "wins", "ties", "losses", "n", "mean_length", "eos_rate"):
        assert key in row
    assert "per_prompt" not in row and row["method"] == "human"
    comparison = next(c for c in data["comparisons"] if c["metric"] == "gold_reward")
    assert (comparison["a"], comparison["b"]) == ("cw-dpo", "human")
    assert comparison["diff"] == pytest.approx(1.5 / 6) and comparison["ci_low"] <= comparison["diff"]
    markdown = paths["markdown"].read_text()
    assert "## Paired comparisons" in markdown and "## Diagnosis: the weak labels" in markdown
    assert paths["gain_plot"].exists() and paths["comparisons_plot"].exists()
