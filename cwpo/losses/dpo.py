"""DPO, IPO and rDPO: per-pair preference losses on policy/reference log-ratios (Eq. 9-11 of CW-PO).

A log-ratio is ``log π_θ(y|x) - log π_ref(y|x)``, both summed over the response tokens only. Every function takes
the log-ratios of the chosen and of the rejected responses, forms ``h = chosen - rejected`` and returns one loss
per pair, shape (b,), unreduced: the confidence weights ``c`` of Eq. 7 and the batch reduction are applied by
``cwpo.losses.weighted_loss``.

All three compute in float32 (float64 for float64 inputs; float16/bfloat16 inputs are upcast before ``h`` is
formed) and return that dtype, so half-precision log-ratios lose nothing in the subtraction or in ``logsigmoid``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cwpo.errors import ConfigError
from cwpo.losses._common import check_positive, check_same_shape, compute_dtype


def _margin(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor) -> torch.Tensor:
    """``h`` of Eq. 9-11, in the compute dtype. Shape (b,)."""
    check_same_shape("chosen_logratios", chosen_logratios, "rejected_logratios", rejected_logratios)
    dtype = compute_dtype(chosen_logratios, rejected_logratios)
    return chosen_logratios.to(dtype) - rejected_logratios.to(dtype)


def dpo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Per-pair DPO loss ``-log σ(β h)`` (Eq. 9 of CW-PO with c ≡ 1; Rafailov et al., 2023).

    Args:
        chosen_logratios: ``log π_θ(y_w|x) - log π_ref(y_w|x)``. Shape (b,).
        rejected_logratios: ``log π_θ(y_l|x) - log π_ref(y_l|x)``. Shape (b,).
        beta: the KL strength β > 0.

    Returns:
        The loss of each pair, float32 (float64 for float64 inputs). Shape (b,).

    Raises:
        ConfigError: if ``beta`` is not a finite number > 0, or the two inputs differ in shape.
    """
    check_positive("beta", beta)
    return -F.logsigmoid(beta * _margin(chosen_logratios, rejected_logratios))


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    tau: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair IPO loss ``(h - 1/(2τ))²`` (Eq. 10 of CW-PO with c ≡ 1; Azar et al., 2024).

    Length averaging is an explicit choice: with ``chosen_lengths`` and ``rejected_lengths`` given, each log-ratio
    is divided by its response's token count before ``h`` is formed (the usual practical IPO, whose squared loss
    otherwise grows with response length); without them the summed log-ratios are used as in Eq. 10. The loss is
    zero, and minimal, at ``h = 1/(2τ)``.

    Args:
        chosen_logratios: ``log π_θ(y_w|x) - log π_ref(y_w|x)``, summed over response tokens. Shape (b,).
        rejected_logratios: ``log π_θ(y_l|x) - log π_ref(y_l|x)``, summed over response tokens. Shape (b,).
        tau: the regularisation τ > 0; the target margin is ``1/(2τ)``.
        chosen_lengths: response token counts of the chosen responses (the ``token_counts`` that
            ``sequence_logps`` returns), or None for no length averaging. Shape (b,).
        rejected_lengths: the same for the rejected responses; given exactly when ``chosen_lengths`` is.
            Shape (b,).

    Returns:
        The loss of each pair, float32 (float64 for float64 inputs). Shape (b,).

    Raises:
        ConfigError: if ``tau`` is not a finite number > 0, only one of the two lengths is given, or shapes differ.
    """
    check_positive("tau", tau)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ConfigError("ipo_loss needs both chosen_lengths and rejected_lengths for length averaging, or neither")
    if chosen_lengths is not None and rejected_lengths is not None:
        check_same_shape("chosen_logratios", chosen_logratios, "chosen_lengths", chosen_lengths)
        check_same_shape("rejected_logratios", rejected_logratios, "rejected_lengths", rejected_lengths)
        dtype = compute_dtype(chosen_logratios, rejected_logratios)
        # A response with no tokens has a log-ratio of exactly 0; clamping its count to 1 keeps it 0, not NaN.
        chosen_logratios = chosen_logratios.to(dtype) / chosen_lengths.to(dtype).clamp_min(1)
        rejected_logratios = rejected_logratios.to(dtype) / rejected_lengths.to(dtype).clamp_min(1)
    margin = _margin(chosen_logratios, rejected_logratios)
    return (margin - 1 / (2 * tau)) ** 2


def rdpo_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *, beta: float, epsilon: float
) -> torch.Tensor:
    """Per-pair robust DPO loss (Eq. 11 of CW-PO with c ≡ 1; Chowdhury et al., 2024).

    ``[(1-ε)·(-log σ(βh)) - ε·(-log σ(-βh))] / (1 - 2ε)``: an unbiased DPO loss when each label was flipped with
    probability ε. Since ``-log σ(-z) = -log σ(z) + z`` this equals ``dpo_loss - ε β h / (1 - 2ε)``, so it is
    unbounded below for ε > 0 (large ``h`` is rewarded linearly) and equals DPO exactly at ε = 0.

    Args:
        chosen_logratios: ``log π_θ(y_w|x) - log π_ref(y_w|x)``. Shape (b,).
        rejected_logratios: ``log π_θ(y_l|x) - log π_ref(y_l|x)``. Shape (b,).
        beta: the scale β > 0 of the logistic terms (γ in Eq. 11).
        epsilon: the assumed label-flip rate, 0 ≤ ε < 0.5 (0.1 is the usual choice).

    Returns:
        The loss of each pair, float32 (float64 for float64 inputs). Shape (b,).

    Raises:
        ConfigError: if ``beta`` is not a finite number > 0, ``epsilon`` is outside [0, 0.5), or shapes differ.
    """
    check_positive("beta", beta)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < 0.5:
        raise ConfigError(f"epsilon must be a number with 0 <= epsilon < 0.5, got {epsilon!r}")
    scaled_margin = beta * _margin(chosen_logratios, rejected_logratios)
    loss_as_labelled = -F.logsigmoid(scaled_margin)
    loss_if_flipped = -F.logsigmoid(-scaled_margin)
    return ((1 - epsilon) * loss_as_labelled - epsilon * loss_if_flipped) / (1 - 2 * epsilon)
