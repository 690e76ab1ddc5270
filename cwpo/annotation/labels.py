"""From scores to weak labels with confidence (stage 2 of CW-PO, Eq. 6 and Eq. 8).

Pure bookkeeping on records: no model. ``annotate`` scores both responses of each pair, then calls
:func:`label_pairs` on the whole dataset at once (the ``rank`` and ``minmax`` confidence schemes are relative to
the whole dataset, never to a batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cwpo.errors import CwpoError


def label_pairs(
    records: Sequence[dict[str, Any]],
    scores: Sequence[tuple[float, float]],
    *,
    confidence: str = "cw",
) -> list[dict[str, Any]]:
    """Order each pair by the weak annotator and attach its confidence.

    For each record with scores ``(s1, s2)`` of its ``chosen`` and ``rejected`` responses (for PairRM,
    ``f(x, y1, y2)`` and ``f(x, y2, y1)``): the weak winner ``y_w = argmax`` (Eq. 6) becomes ``chosen``, so the
    pair (and every paired column, e.g. ``gold_reward_*``) is swapped when ``s2 > s1``; a tie keeps the input
    order. Then

    - ``weak_score_chosen``, ``weak_score_rejected``: the scores in the new order, so ``Δ`` is their difference
      (``Δ ≥ 0``);
    - ``confidence``: ``confidence_from_margin(Δ, scheme)`` over the whole dataset (default ``cw``, Eq. 8:
      ``2σ(Δ) - 1``); an input ``confidence`` column is replaced;
    - ``human_label`` (only where the input has the column): 1 when the human agrees with the weak order. A loaded pair
      is in human order (``human_label = 1``), so it stays 1 unless the pair was swapped;
    - ``agrees_with_human`` (only where ``human_label`` exists): ``human_label == 1``.

    Args:
        records: the pairs, in the schema of ``docs/ARCHITECTURE.md``.
        scores: ``(score of chosen, score of rejected)`` per record, in record order.
        confidence: a scheme of :data:`cwpo.losses.CONFIDENCE_SCHEMES`.

    Returns:
        New records (the inputs are not modified), in input order.
    """
    import torch

    from cwpo.data.schema import swap_pair
    from cwpo.losses import confidence_from_margin

    if len(records) != len(scores):
        raise CwpoError(f"{len(records)} records but {len(scores)} scores")
    labelled = []
    margins = []
    for record, (score_1, score_2) in zip(records, scores, strict=True):
        swap = score_2 > score_1
        out = swap_pair(record) if swap else dict(record)
        winner, loser = (score_2, score_1) if swap else (score_1, score_2)
        out["weak_score_chosen"], out["weak_score_rejected"] = float(winner), float(loser)
        if "human_label" in record:
            human = record["human_label"]
            # A missing label (None) stays missing; the column stays, so every row keeps the same columns.
            out["human_label"] = None if human is None else (1 - int(human) if swap else int(human))
            out["agrees_with_human"] = None if human is None else out["human_label"] == 1
        margins.append(winner - loser)
        labelled.append(out)
    # float64: the margin of two float32 scores is exact in float64, so confidences do not depend on rounding.
    values = confidence_from_margin(torch.tensor(margins, dtype=torch.float64), confidence).tolist()
    for out, value in zip(labelled, values, strict=True):
        out["confidence"] = float(value)
    return labelled
