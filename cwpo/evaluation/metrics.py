"""Evaluation metrics: gold reward accuracy (GRA), held-out preference accuracy, win rates.

All percentages are in ``[0, 100]``; standard errors are in percentage points.

GRA (METHOD.md, Evaluation): for each test prompt one response of the aligned model and one of its SFT model;
GRA is the % of prompts where the gold judge prefers the aligned response. A tie (equal gold scores, or a
margin within ``tol``) is **not** a win: it lowers GRA and is reported on its own as ``ties``; the remaining
prompts are ``losses``. The same computation on the margins of a pairwise judge (SteamSHP, an LLM judge) gives
a win rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from cwpo.errors import ConfigError, CwpoError

StandardError = Literal["binomial", "bootstrap"]


@dataclass(frozen=True)
class GRAResult:
    """Outcome of a pairwise comparison over ``n`` prompts.

    Attributes:
        gra: % of prompts the aligned (first) response wins.
        ties: % of prompts with a tie (``|margin| <= tol``).
        n: number of prompts.
        n_wins: prompts won.
        n_ties: prompts tied.
        n_losses: prompts lost.
        se: standard error of ``gra`` in percentage points.
        se_method: ``"binomial"`` (``sqrt(p (1 - p) / n)``) or ``"bootstrap"``.
    """

    gra: float
    ties: float
    n: int
    n_wins: int
    n_ties: int
    n_losses: int
    se: float
    se_method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PreferenceAccuracy:
    """Held-out preference accuracy of a policy against human labels.

    Attributes:
        accuracy: % of pairs where the sign of ``h`` matches the human label; ties count as wrong.
        ties: % of pairs with ``|h| <= tol`` (no preference).
        n: number of pairs.
        n_correct: pairs ordered as the human did.
        n_ties: pairs with no preference.
        se: binomial standard error of ``accuracy`` in percentage points.
    """

    accuracy: float
    ties: float
    n: int
    n_correct: int
    n_ties: int
    se: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def binomial_se(successes: int, n: int) -> float:
    """Standard error of a proportion, in percentage points: ``100 * sqrt(p (1 - p) / n)``, ``p = successes / n``."""
    if n <= 0:
        raise CwpoError("a standard error needs at least one observation")
    p = successes / n
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of ``values`` and its standard error ``s / sqrt(n)`` (sample standard deviation; 0 for one value)."""
    n = len(values)
    if n == 0:
        raise CwpoError("a mean and its standard error need at least one observation")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def bootstrap_se(outcomes: torch.Tensor, *, n_resamples: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard error of the mean of ``outcomes`` (0/1 per prompt), in percentage points.

    Args:
        outcomes: 1 for a win, 0 otherwise. Shape (n,).
        n_resamples: bootstrap resamples (with replacement, size ``n`` each).
        seed: seed of the resampling, so the value is reproducible.

    Returns:
        ``100 *`` the standard deviation (ddof 1) of the resampled means.
    """
    n = outcomes.numel()
    if n == 0:
        raise CwpoError("a standard error needs at least one observation")
    if n_resamples < 2:
        raise ConfigError(f"n_resamples must be >= 2, got {n_resamples}")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (n_resamples, n), generator=generator)
    means = outcomes.double().flatten()[picks].mean(dim=1)
    return 100.0 * means.std(correction=1).item()


def pairwise_accuracy(
    margins: torch.Tensor,
    *,
    tol: float = 0.0,
    se: StandardError = "binomial",
    n_resamples: int = 1000,
    seed: int = 0,
) -> GRAResult:
    """Win / tie / loss percentages from preference margins (``> 0``: the first response is better).

    Args:
        margins: judge margins, e.g. ``score(aligned) - score(sft)``. Shape (n,).
        tol: ``|margin| <= tol`` is a tie; ``0`` means exact equality only.
        se: how the standard error of the win percentage is computed.
        n_resamples, seed: bootstrap settings (``se="bootstrap"``).
    """
    if tol < 0:
        raise ConfigError(f"tol must be >= 0, got {tol}")
    margins = torch.as_tensor(margins).detach().flatten().cpu()
    n = margins.numel()
    if n == 0:
        raise CwpoError("GRA needs at least one prompt")
    if torch.isnan(margins).any():
        raise CwpoError(f"{int(torch.isnan(margins).sum())} judge margins are NaN")
    wins = margins > tol
    ties = margins.abs() <= tol
    n_wins, n_ties = int(wins.sum()), int(ties.sum())
    if se == "binomial":
        error = binomial_se(n_wins, n)
    elif se == "bootstrap":
        error = bootstrap_se(wins.double(), n_resamples=n_resamples, seed=seed)
    else:
        raise ConfigError(f"se must be 'binomial' or 'bootstrap', got {se!r}")
    return GRAResult(
        gra=100.0 * n_wins / n,
        ties=100.0 * n_ties / n,
        n=n,
        n_wins=n_wins,
        n_ties=n_ties,
        n_losses=n - n_wins - n_ties,
        se=error,
        se_method=se,
    )


def gold_reward_accuracy(
    aligned_scores: torch.Tensor,
    sft_scores: torch.Tensor,
    *,
    tol: float = 0.0,
    se: StandardError = "binomial",
    n_resamples: int = 1000,
    seed: int = 0,
) -> GRAResult:
    """GRA: % of prompts where the gold score of the aligned response beats the SFT response's.

    Args:
        aligned_scores: gold scores of the aligned model's responses. Shape (n,).
        sft_scores: gold scores of the SFT model's responses to the same prompts. Shape (n,).
        tol: scores within ``tol`` tie (``0``: exact float equality).
        se, n_resamples, seed: see :func:`pairwise_accuracy`.
    """
    aligned_scores = torch.as_tensor(aligned_scores).double().flatten()
    sft_scores = torch.as_tensor(sft_scores).double().flatten()
    if aligned_scores.shape != sft_scores.shape:
        raise CwpoError(
            f"GRA needs one SFT score per aligned score, got {aligned_scores.numel()} and {sft_scores.numel()}"
        )
    # in float64, a - b == 0 exactly when a == b, so tol = 0 is exact equality of the scores
    return pairwise_accuracy(aligned_scores - sft_scores, tol=tol, se=se, n_resamples=n_resamples, seed=seed)


def evaluate_gra(
    judge,
    prompts: Sequence[Any],
    aligned_responses: Sequence[str],
    sft_responses: Sequence[str],
    **kwargs: Any,
) -> GRAResult:
    """GRA of aligned vs SFT responses under ``judge`` (its ``compare``, else its score difference).

    ``kwargs`` go to :func:`pairwise_accuracy` (``tol``, ``se``, ...).
    """
    from cwpo.evaluation.judges import judge_compare

    margins = judge_compare(judge, prompts, aligned_responses, sft_responses)
    return pairwise_accuracy(margins.double(), **kwargs)


def implicit_reward_margins(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """``h = [log π(y_w|x) - log π_ref(y_w|x)] - [log π(y_l|x) - log π_ref(y_l|x)]`` (METHOD.md, Stage 3).

    Args:
        policy_chosen_logps, policy_rejected_logps: summed response log-probs under the policy. Shape (b,).
        ref_chosen_logps, ref_rejected_logps: the same under the reference (SFT) model. Shape (b,).

    Returns:
        ``h`` in float64. Shape (b,).
    """
    tensors = [torch.as_tensor(t).double().flatten() for t in (policy_chosen_logps, policy_rejected_logps)]
    refs = [torch.as_tensor(t).double().flatten() for t in (ref_chosen_logps, ref_rejected_logps)]
    shapes = {t.shape for t in tensors + refs}
    if len(shapes) != 1:
        raise CwpoError(f"log-prob tensors must have one shape, got {sorted(tuple(s) for s in shapes)}")
    return (tensors[0] - refs[0]) - (tensors[1] - refs[1])


def preference_accuracy(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    human_label: torch.Tensor | None = None,
    *,
    tol: float = 0.0,
) -> PreferenceAccuracy:
    """Held-out preference accuracy: % of test pairs where the policy's ``h`` agrees with the human label.

    A pair is correct when ``h > tol`` and the human preferred ``chosen`` (``human_label == 1``), or ``h < -tol``
    and the human preferred ``rejected`` (``human_label == 0``). A pair with ``|h| <= tol`` expresses no
    preference: it counts as **wrong** in ``accuracy`` and is also reported in ``ties``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: summed response
            log-probs. Shape (b,).
        human_label: 1 where the human prefers ``chosen``, 0 where ``rejected``; ``None`` means all 1 (loaded
            data is in human order). Shape (b,).
        tol: margins within ``tol`` of 0 are ties.
    """
    if tol < 0:
        raise ConfigError(f"tol must be >= 0, got {tol}")
    h = implicit_reward_margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    n = h.numel()
    if n == 0:
        raise CwpoError("preference accuracy needs at least one pair")
    if human_label is None:
        labels = torch.ones(n, dtype=torch.long)
    else:
        labels = torch.as_tensor(human_label).long().flatten().cpu()
        if labels.numel() != n:
            raise CwpoError(f"got {labels.numel()} human labels for {n} pairs")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise CwpoError("human_label must be 0 or 1")
    h = h.cpu()
    correct = ((h > tol) & (labels == 1)) | ((h < -tol) & (labels == 0))
    ties = h.abs() <= tol
    n_correct, n_ties = int(correct.sum()), int(ties.sum())
    return PreferenceAccuracy(
        accuracy=100.0 * n_correct / n,
        ties=100.0 * n_ties / n,
        n=n,
        n_correct=n_correct,
        n_ties=n_ties,
        se=binomial_se(n_correct, n),
    )
