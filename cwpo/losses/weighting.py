"""The confidence-weighted batch loss of CW-PO (Eq. 7): any per-pair objective times ``c``, then reduced."""

from __future__ import annotations

import torch

from cwpo.errors import ConfigError
from cwpo.losses._common import check_same_shape, compute_dtype

REDUCTIONS = ("mean", "normalized")
"""The valid ``reduction`` values of ``weighted_loss``."""


def weighted_loss(per_pair_loss: torch.Tensor, weights: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reduce per-pair losses ``ℓ`` with confidence weights ``c`` to the scalar of Eq. 7 of CW-PO.

    - ``"mean"`` (default): ``(1/b) Σ c·ℓ``, the batch estimate of Eq. 7's expectation ``E[c·ℓ]``. Chosen as
      default because each pair's gradient is ``c/b`` times its plain gradient whatever else is in the batch (the
      effective learning rate of a pair does not depend on its neighbours' confidences), and with ``c ≡ 1`` it is
      exactly the plain mean loss.
    - ``"normalized"``: ``Σ c·ℓ / Σ c``, a weighted average. It rescales the batch so that its mean weight is 1,
      which raises the effective learning rate of batches of low-confidence pairs. The denominator is clamped to
      the smallest normal float rather than tested (no ``.item()``, no Python branch on a tensor, so no host
      sync): when every weight is 0 the result is exactly 0, with zero gradient and no NaN.

    With either reduction a pair of weight 0 gives its inputs exactly zero gradient (as long as its ``ℓ`` and
    ``∂ℓ`` are finite, which holds for every loss in ``cwpo.losses``).

    Args:
        per_pair_loss: the unreduced loss ``ℓ`` of each pair, e.g. ``dpo_loss(...)``. Shape (b,).
        weights: confidences ``c >= 0`` (the batch's ``weights``). Treated as constants of the objective: they are
            detached, so no gradient flows into whatever produced them. Shape (b,).
        reduction: ``"mean"`` or ``"normalized"``, as above.

    Returns:
        The scalar loss, float32 (float64 for float64 inputs). Shape ().

    Raises:
        ConfigError: for an unknown ``reduction`` or when the two tensors differ in shape.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; valid reductions: {', '.join(REDUCTIONS)}")
    check_same_shape("per_pair_loss", per_pair_loss, "weights", weights)
    dtype = compute_dtype(per_pair_loss, weights)
    weighted = weights.detach().to(dtype) * per_pair_loss.to(dtype)
    if reduction == "mean":
        return weighted.mean()
    total_weight = weights.detach().to(dtype).sum()
    # Σc = 0 gives 0 / tiny = 0 instead of 0 / 0 = NaN, without reading the sum on the host.
    return weighted.sum() / total_weight.clamp_min(torch.finfo(dtype).tiny)
