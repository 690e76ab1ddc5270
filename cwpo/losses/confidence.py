"""Per-pair confidence from the weak annotator's margin (Eq. 8 of CW-PO and the variants of its Table 5).

``margin`` is ``Δ = r_φ(x, y_w) - r_φ(x, y_l)`` (or a PairRM score). Every scheme reads ``|Δ|``, so the sign, which
only says which response the annotator preferred, never changes the confidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cwpo.errors import ConfigError, DataError
from cwpo.losses._common import compute_dtype


def _cw(abs_margin: torch.Tensor) -> torch.Tensor:
    # 2σ(x) - 1 = tanh(x/2) exactly; tanh avoids the cancellation of 2σ(x) - 1 near x = 0.
    return torch.tanh(abs_margin / 2)


def _rank(abs_margin: torch.Tensor) -> torch.Tensor:
    flat = abs_margin.reshape(-1)
    ordered = torch.sort(flat).values
    # Empirical CDF: the share of pairs whose |Δ| is <= this pair's, so ties share one value.
    at_or_below = torch.searchsorted(ordered, flat, right=True)
    return (at_or_below.to(abs_margin.dtype) / max(flat.numel(), 1)).reshape(abs_margin.shape)


def _minmax(abs_margin: torch.Tensor) -> torch.Tensor:
    if abs_margin.numel() == 0:
        return abs_margin.clone()
    low, high = abs_margin.min(), abs_margin.max()
    spread = high - low
    # All margins equal: every pair is as confident as the most confident one, weight 1 (not 0/0).
    scaled = (abs_margin - low) / spread.clamp_min(torch.finfo(abs_margin.dtype).tiny)
    return torch.where(spread > 0, scaled, torch.ones_like(abs_margin))


CONFIDENCE_SCHEMES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cw": _cw,
    "sigmoid": torch.sigmoid,
    "margin": lambda abs_margin: abs_margin,
    "uniform": torch.ones_like,
    "rank": _rank,
    "minmax": _minmax,
}
"""Confidence schemes by name; each maps ``|Δ|`` to ``c``. Register a new one by adding a function here."""


def confidence_from_margin(margin: torch.Tensor, scheme: str = "cw") -> torch.Tensor:
    """Confidence weights ``c`` from annotator margins ``Δ``.

    Schemes (Table 5 of CW-PO, plus two normalised variants):

    - ``"cw"`` (default, Eq. 8): ``2σ(|Δ|) - 1`` in [0, 1); 0 at Δ = 0. Computed as ``tanh(|Δ|/2)``, which is the
      same function; in float32 it rounds to exactly 1.0 once ``|Δ|`` exceeds about 17.
    - ``"sigmoid"``: ``σ(|Δ|)`` in [0.5, 1).
    - ``"margin"``: ``|Δ|``, unbounded.
    - ``"uniform"``: all ones (plain weak labelling).
    - ``"rank"``: the empirical CDF of ``|Δ|`` over the given tensor, ``#{j : |Δ_j| <= |Δ_i|} / n`` in (0, 1]; the
      largest margin gets 1, tied margins share one value. Relative to the whole tensor: pass a dataset's
      margins, not a batch's.
    - ``"minmax"``: ``(|Δ| - min) / (max - min)`` over the given tensor, in [0, 1]; the smallest margin gets 0;
      all-equal margins get 1. Also relative to the whole tensor.

    Args:
        margin: annotator margins ``Δ`` (any sign). Any shape, (n,) for a dataset.
        scheme: one of the names above.

    Returns:
        ``c`` with ``margin``'s shape, float32 (float64 for float64 input). Differentiable for ``cw``, ``sigmoid``
        and ``margin`` (except at Δ = 0, where ``|Δ|`` has no derivative).

    Raises:
        ConfigError: for an unknown ``scheme``; the message lists the valid ones.
    """
    if scheme not in CONFIDENCE_SCHEMES:
        raise ConfigError(f"unknown confidence scheme {scheme!r}; valid schemes: {', '.join(CONFIDENCE_SCHEMES)}")
    abs_margin = margin.to(compute_dtype(margin)).abs()
    return CONFIDENCE_SCHEMES[scheme](abs_margin)


def top_n_weights(confidence: torch.Tensor, fraction: float) -> torch.Tensor:
    """Hard top-N % filtering (Table 5 of CW-PO): weight 1 for the most confident pairs, 0 for the rest.

    Keeps ``k = ceil(n · fraction)`` pairs, where ``n · fraction`` is first rounded to 9 decimals so that
    floating-point error cannot add a pair (``100 · 0.07`` is 7.000000000000001 in binary, and keeps 7, not 8).
    Ties are broken stably: among equal confidences the pair with the lower index is kept. Works on a whole
    dataset's confidences; on a batch it would keep the top of that batch only.

    Args:
        confidence: per-pair confidences, no NaN. Shape (n,).
        fraction: the share of pairs to keep, 0 <= fraction <= 1 (0.3 keeps the top 30 %).

    Returns:
        0/1 weights, float32, on ``confidence``'s device. Shape (n,).

    Raises:
        ConfigError: if ``confidence`` is not 1-D or ``fraction`` is outside [0, 1].
        DataError: if ``confidence`` holds NaN (its place in the order would be arbitrary).
    """
    if confidence.dim() != 1:
        raise ConfigError(f"top_n_weights takes a 1-D tensor of confidences, got shape {tuple(confidence.shape)}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(f"fraction must be a number with 0 <= fraction <= 1, got {fraction!r}")
    nan_count = int(torch.isnan(confidence).sum())  # a host sync, fine for this dataset-level, offline step
    if nan_count:
        raise DataError(f"confidence holds {nan_count} NaN value(s); top-N filtering needs a total order")
    n = confidence.numel()
    keep = math.ceil(round(n * fraction, 9))
    order = torch.sort(confidence, descending=True, stable=True).indices
    weights = torch.zeros(n, dtype=torch.float32, device=confidence.device)
    weights[order[:keep]] = 1.0
    return weights
