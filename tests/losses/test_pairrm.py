"""Tests of cwpo/losses/pairrm.py: the PairRM-style annotator's loss and score (appendix J.9 of CW-PO)."""

import math

import pytest
import torch
from torch.testing import assert_close

from cwpo.losses.bt import bt_loss
from cwpo.losses.pairrm import pairrm_loss, pairrm_score


def test_loss_exact_values():
    """½ [-log σ(f_wl) - log σ(-f_lw)].

    f_wl = 2, f_lw = -2 -> ½ (0.1269280110 + 0.1269280110) = 0.1269280110
    f_wl = 0, f_lw = 0  -> log 2
    f_wl = 1, f_lw = 1  -> ½ (0.3132616875 + 1.3132616875) = 0.8132616875 (the orders disagree)
    """
    loss = pairrm_loss(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([-2.0, 0.0, 1.0]))
    assert_close(loss, torch.tensor([0.1269280110, math.log(2), 0.8132616875]))


def test_loss_of_antisymmetric_logits_is_bt_loss():
    """With f(x, y_l, y_w) = -f(x, y_w, y_l) both terms equal -log σ(f_wl): the mean is the BT loss."""
    logits = torch.randn(8, generator=torch.Generator().manual_seed(0)) * 4
    assert_close(pairrm_loss(logits, -logits), bt_loss(logits, torch.zeros(8)))


def test_loss_exact_gradient():
    """At f = 0 in both orders: d/df_wl = -½ σ(0) = -0.25 and d/df_lw = +½ σ(0) = 0.25."""
    logits_ab = torch.zeros(1, requires_grad=True)
    logits_ba = torch.zeros(1, requires_grad=True)
    pairrm_loss(logits_ab, logits_ba).sum().backward()
    assert_close(logits_ab.grad, torch.tensor([-0.25]))
    assert_close(logits_ba.grad, torch.tensor([0.25]))


def test_score_exact_values():
    """f(x, y1, y2) - f(x, y2, y1): (3, 1) -> 2, (1, 3) -> -2, (-0.5, -0.5) -> 0."""
    score = pairrm_score(torch.tensor([3.0, 1.0, -0.5]), torch.tensor([1.0, 3.0, -0.5]))
    assert_close(score, torch.tensor([2.0, -2.0, 0.0]))


def test_gradcheck():
    logits_ab = torch.randn(5, dtype=torch.float64, requires_grad=True)
    logits_ba = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pairrm_loss, (logits_ab, logits_ba))
    assert torch.autograd.gradcheck(pairrm_score, (logits_ab, logits_ba))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_values_and_gradients_at_extreme_logits(dtype):
    logits_ab = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=dtype, requires_grad=True)
    logits_ba = torch.tensor([-1e4, 1e4, 1e4, -1e4], dtype=dtype, requires_grad=True)
    loss = pairrm_loss(logits_ab, logits_ba)
    loss.sum().backward()
    big = torch.tensor(1e4, dtype=dtype).item()  # 1e4 itself in float32/float16, 9984 in bfloat16
    assert loss.dtype == torch.float32
    assert_close(loss, torch.tensor([0.0, big, big / 2, big / 2]))
    assert torch.isfinite(logits_ab.grad).all() and torch.isfinite(logits_ba.grad).all()
