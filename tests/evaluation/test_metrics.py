"""GRA, standard errors and held-out preference accuracy on hand-built numbers."""

from __future__ import annotations

import math

import pytest
import torch

from cwpo.errors import ConfigError, CwpoError
from cwpo.evaluation.judges import FunctionJudge
from cwpo.evaluation.metrics import (
    binomial_se,
    bootstrap_se,
    evaluate_gra,
    gold_reward_accuracy,
    implicit_reward_margins,
    mean_se,
    pairwise_accuracy,
    preference_accuracy,
)


def test_gra_exact_with_a_tie():
    """Prompts: win (1.0 > 0.5), tie (2.0 = 2.0), loss (3.0 < 4.0), win (0.5 > 0.1).

    GRA = 2/4 = 50 %, ties = 1/4 = 25 %, SE = 100 * sqrt(0.5 * 0.5 / 4) = 25 points.
    """
    result = gold_reward_accuracy(torch.tensor([1.0, 2.0, 3.0, 0.5]), torch.tensor([0.5, 2.0, 4.0, 0.1]))
    assert (result.gra, result.ties, result.n) == (50.0, 25.0, 4)
    assert (result.n_wins, result.n_ties, result.n_losses) == (2, 1, 1)
    assert result.se == pytest.approx(25.0)
    assert result.se_method == "binomial"


def test_gra_ties_are_exact_equality_unless_a_tolerance_is_given():
    """0.1 + 0.2 is 0.30000000000000004 in float64: a (tiny) win at tol 0, a tie at tol 1e-9."""
    aligned = torch.tensor([0.1 + 0.2, 1.05, 7.0], dtype=torch.float64)
    sft = torch.tensor([0.3, 1.0, 7.0], dtype=torch.float64)
    exact = gold_reward_accuracy(aligned, sft)
    assert (exact.n_wins, exact.n_ties) == (2, 1)
    loose = gold_reward_accuracy(aligned, sft, tol=0.1)
    assert (loose.n_wins, loose.n_ties, loose.n_losses) == (0, 3, 0)
    assert loose.gra == 0.0 and loose.ties == 100.0


def test_gra_accepts_python_lists_and_rejects_bad_input():
    assert gold_reward_accuracy([2.0, 0.0], [1.0, 1.0]).gra == 50.0
    with pytest.raises(CwpoError):
        gold_reward_accuracy([1.0, 2.0], [1.0])
    with pytest.raises(CwpoError):
        pairwise_accuracy(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(CwpoError):
        pairwise_accuracy(torch.tensor([]))
    with pytest.raises(ConfigError):
        pairwise_accuracy(torch.tensor([1.0]), tol=-1.0)


def test_binomial_standard_error_known_values():
    """50 wins of 100: 100 * sqrt(0.25 / 100) = 5.0; 30 of 120: 100 * sqrt(0.25 * 0.75 / 120) = 3.9528..."""
    assert binomial_se(50, 100) == pytest.approx(5.0)
    assert binomial_se(30, 120) == pytest.approx(100 * math.sqrt(0.25 * 0.75 / 120))
    assert binomial_se(0, 10) == 0.0
    margins = torch.tensor([1.0] * 50 + [-1.0] * 50)
    assert pairwise_accuracy(margins).se == pytest.approx(5.0)


def test_bootstrap_standard_error_is_seeded_and_near_binomial():
    outcomes = torch.tensor([1.0] * 120 + [0.0] * 280)
    first = bootstrap_se(outcomes, n_resamples=2000, seed=1)
    assert first == bootstrap_se(outcomes, n_resamples=2000, seed=1)
    assert first == pytest.approx(binomial_se(120, 400), rel=0.1)
    result = pairwise_accuracy(outcomes * 2 - 1, se="bootstrap", n_resamples=2000, seed=1)
    assert result.se == pytest.approx(first) and result.se_method == "bootstrap"


def test_evaluate_gra_with_a_function_judge():
    judge = FunctionJudge(lambda prompt, response: float(len(response)))
    result = evaluate_gra(judge, ["p"] * 3, ["long answer", "ab", "xyz"], ["short", "ab", "wxyz"])
    assert (result.n_wins, result.n_ties, result.n_losses) == (1, 1, 1)


def test_implicit_reward_margin():
    """h = (π_w - ref_w) - (π_l - ref_l) = (-1 - -2) - (-3 - -1) = 1 - (-2) = 3."""
    h = implicit_reward_margins(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-1.0]))
    assert h.tolist() == [3.0]


def test_preference_accuracy_exact():
    """Reference log-probs 0, so h = chosen - rejected = [1, -1, 0, 1].

    With labels [1, 0, 1, 0]: pair 0 right (h > 0, human chose chosen), pair 1 right (h < 0, human chose
    rejected), pair 2 a tie (wrong, and counted in ties), pair 3 wrong. Accuracy 50 %, ties 25 %.
    Without labels (all 1): pairs 0 and 3 right, 50 %.
    """
    chosen = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    rejected = torch.tensor([-2.0, -1.0, -3.0, -5.0])
    zeros = torch.zeros(4)
    result = preference_accuracy(chosen, rejected, zeros, zeros, torch.tensor([1, 0, 1, 0]))
    assert (result.accuracy, result.ties, result.n, result.n_correct, result.n_ties) == (50.0, 25.0, 4, 2, 1)
    assert result.se == pytest.approx(25.0)
    unlabeled = preference_accuracy(chosen, rejected, zeros, zeros)
    assert (unlabeled.accuracy, unlabeled.n_correct) == (50.0, 2)
    assert preference_accuracy(chosen, rejected, zeros, zeros, tol=1.0).accuracy == 0.0  # all |h| <= 1: ties


def test_preference_accuracy_uses_the_reference():
    """Policy prefers chosen by 1 nat but the reference by 2: h = -1, so the pair counts as wrong."""
    result = preference_accuracy(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-3.0]))
    assert result.accuracy == 0.0


def test_preference_accuracy_rejects_bad_labels():
    one = torch.ones(2)
    with pytest.raises(CwpoError):
        preference_accuracy(one, one, one, one, torch.tensor([1, 2]))
    with pytest.raises(CwpoError):
        preference_accuracy(one, one, one, torch.ones(3))


def test_mean_se_by_hand():
    """[1, 2, 3, 4]: mean 2.5, sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, SE sqrt(5/3 / 4) = 0.645497."""
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and math.isclose(se, math.sqrt(5 / 12))
    assert mean_se([7.0]) == (7.0, 0.0)
    with pytest.raises(CwpoError, match="at least one observation"):
        mean_se([])
