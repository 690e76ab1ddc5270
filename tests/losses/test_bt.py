"""Tests of cwpo/losses/bt.py: the Bradley-Terry loss of the weak annotator (Eq. 5 of CW-PO)."""

import math

import pytest
import torch
from torch.testing import assert_close

from cwpo.losses.bt import bt_loss


def test_exact_values():
    """-log σ(r_w - r_l) = log(1 + e^-(r_w - r_l)).

    r_w - r_l = 2  -> log(1 + e^-2) = 0.1269280110
    r_w - r_l = 0  -> log 2         = 0.6931471806
    r_w - r_l = -2 -> log(1 + e^2)  = 2.1269280110
    """
    loss = bt_loss(torch.tensor([2.0, 3.0, -1.0]), torch.tensor([0.0, 3.0, 1.0]))
    assert_close(loss, torch.tensor([0.1269280110, math.log(2), 2.1269280110]))


def test_exact_gradient():
    """d/dr_w of -log σ(r_w - r_l) is -σ(r_l - r_w): at a margin of 0 that is -0.5, and +0.5 for r_l."""
    chosen = torch.zeros(1, requires_grad=True)
    rejected = torch.zeros(1, requires_grad=True)
    bt_loss(chosen, rejected).sum().backward()
    assert_close(chosen.grad, torch.tensor([-0.5]))
    assert_close(rejected.grad, torch.tensor([0.5]))


def test_depends_only_on_the_margin():
    chosen, rejected = torch.tensor([4.0, -7.0, 0.3]), torch.tensor([3.0, -8.0, 2.0])
    assert_close(bt_loss(chosen, rejected), bt_loss(chosen - rejected, torch.zeros(3)))


def test_swapping_gives_the_complementary_probability():
    """P(w ≻ l) + P(l ≻ w) = 1, so e^-bt(a, b) + e^-bt(b, a) = 1 and bt(b, a) - bt(a, b) = a - b."""
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(8, generator=generator) * 3, torch.randn(8, generator=generator) * 3
    forward, swapped = bt_loss(chosen, rejected), bt_loss(rejected, chosen)
    assert_close(torch.exp(-forward) + torch.exp(-swapped), torch.ones(8))
    assert_close(swapped - forward, chosen - rejected)


def test_gradcheck():
    chosen = torch.randn(5, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bt_loss, (chosen, rejected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_values_and_gradients_at_extreme_rewards(dtype):
    chosen = torch.tensor([1e4, -1e4, 1e4], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-1e4, 1e4, 1e4], dtype=dtype, requires_grad=True)
    loss = bt_loss(chosen, rejected)
    loss.sum().backward()
    big = torch.tensor(1e4, dtype=dtype).item()  # 1e4 itself in float32/float16, 9984 in bfloat16
    assert loss.dtype == torch.float32
    assert_close(loss, torch.tensor([0.0, 2 * big, math.log(2)]))
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
