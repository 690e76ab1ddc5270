"""The Bradley-Terry loss of the weak annotator (Eq. 4-5 of CW-PO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cwpo.losses._common import check_same_shape, compute_dtype


def bt_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-log σ(r_w - r_l)`` (Eq. 5 of CW-PO).

    ``-F.logsigmoid`` is finite for any finite margin, so rewards of ±1e4 give no NaN or inf.

    Args:
        chosen_rewards: scalar rewards ``r_φ(x, y_w)`` of the preferred responses. Shape (b,).
        rejected_rewards: scalar rewards ``r_φ(x, y_l)`` of the dispreferred responses. Shape (b,).

    Returns:
        The loss of each pair, float32 (float64 for float64 inputs; half-precision inputs are upcast before the
        difference is taken). Shape (b,). The caller reduces it (see ``weighted_loss``).
    """
    check_same_shape("chosen_rewards", chosen_rewards, "rejected_rewards", rejected_rewards)
    dtype = compute_dtype(chosen_rewards, rejected_rewards)
    margin = chosen_rewards.to(dtype) - rejected_rewards.to(dtype)
    return -F.logsigmoid(margin)
