"""The PairRM-style pairwise annotator: its loss and its score (appendix J.9 of CW-PO, Eq. 20-21).

The annotator reads ``x, y_a, y_b`` together and outputs one logit ``f(x, y_a, y_b)``: how strongly the
first-listed response is preferred. Nothing forces ``f(x, y_a, y_b) = -f(x, y_b, y_a)``, so both orders are
trained and both enter the score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cwpo.losses._common import check_same_shape, compute_dtype


def pairrm_loss(logits_ab: torch.Tensor, logits_ba: torch.Tensor) -> torch.Tensor:
    """Per-pair binary cross-entropy on both orders of a labelled pair (Eq. 20 of CW-PO).

    The form is the **mean** of the two BCE terms::

        ½ · [ -log σ(f(x, y_w, y_l)) - log σ(-f(x, y_l, y_w)) ]

    i.e. the chosen-first order has label 1 and the rejected-first order label 0, and each order counts as one
    BCE example, so the value is on the scale of ``bt_loss``: for an antisymmetric ``f`` it equals
    ``bt_loss(f(x, y_w, y_l), 0)``.

    Args:
        logits_ab: ``f(x, y_w, y_l)``, the logit with the chosen response listed first. Shape (b,).
        logits_ba: ``f(x, y_l, y_w)``, the logit with the rejected response listed first. Shape (b,).

    Returns:
        The loss of each pair, float32 (float64 for float64 inputs). Shape (b,).
    """
    check_same_shape("logits_ab", logits_ab, "logits_ba", logits_ba)
    dtype = compute_dtype(logits_ab, logits_ba)
    chosen_first = -F.logsigmoid(logits_ab.to(dtype))
    rejected_first = -F.logsigmoid(-logits_ba.to(dtype))
    return 0.5 * (chosen_first + rejected_first)


def pairrm_score(logits_12: torch.Tensor, logits_21: torch.Tensor) -> torch.Tensor:
    """The MaxLogits score of an unlabelled pair, ``f(x, y1, y2) - f(x, y2, y1)`` (appendix J.9 of CW-PO).

    Positive means ``y1`` is preferred. Feed it to ``confidence_from_margin`` for Eq. 21's confidence.

    Args:
        logits_12: ``f(x, y1, y2)``. Shape (b,).
        logits_21: ``f(x, y2, y1)``. Shape (b,).

    Returns:
        The score of each pair, float32 (float64 for float64 inputs). Shape (b,).
    """
    check_same_shape("logits_12", logits_12, "logits_21", logits_21)
    dtype = compute_dtype(logits_12, logits_21)
    return logits_12.to(dtype) - logits_21.to(dtype)
