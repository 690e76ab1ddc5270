"""Tests of cwpo/losses/weighting.py: the confidence-weighted batch loss (Eq. 7 of CW-PO)."""

import pytest
import torch
from torch.testing import assert_close

from cwpo.errors import ConfigError
from cwpo.losses.dpo import dpo_loss, ipo_loss, rdpo_loss
from cwpo.losses.weighting import REDUCTIONS, weighted_loss

PER_PAIR_LOSS = torch.tensor([1.0, 2.0, 3.0, 4.0])
WEIGHTS = torch.tensor([1.0, 0.0, 0.5, 0.5])

OBJECTIVE_CALLS = {
    "dpo": lambda chosen, rejected: dpo_loss(chosen, rejected, beta=0.1),
    "ipo": lambda chosen, rejected: ipo_loss(chosen, rejected, tau=0.1),
    "rdpo": lambda chosen, rejected: rdpo_loss(chosen, rejected, beta=0.1, epsilon=0.2),
}


def test_mean_exact_value():
    """(1·1 + 0·2 + 0.5·3 + 0.5·4) / 4 = 4.5 / 4 = 1.125."""
    assert_close(weighted_loss(PER_PAIR_LOSS, WEIGHTS, "mean"), torch.tensor(1.125))


def test_normalized_exact_value():
    """(1·1 + 0·2 + 0.5·3 + 0.5·4) / (1 + 0 + 0.5 + 0.5) = 4.5 / 2 = 2.25."""
    assert_close(weighted_loss(PER_PAIR_LOSS, WEIGHTS, "normalized"), torch.tensor(2.25))


def test_mean_is_the_default():
    assert_close(weighted_loss(PER_PAIR_LOSS, WEIGHTS), torch.tensor(1.125))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unit_weights_give_the_plain_mean(reduction):
    """(1+2+3+4)/4 = 2.5 with either reduction."""
    assert_close(weighted_loss(PER_PAIR_LOSS, torch.ones(4), reduction), torch.tensor(2.5), rtol=0, atol=0)


def test_mean_gradient_of_a_pair_does_not_depend_on_the_other_weights():
    """Under "mean" d/dℓ_0 = c_0 / b = 0.8 / 4 = 0.2 whatever the other pairs' weights are."""
    for others in (torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.1])):
        per_pair_loss = PER_PAIR_LOSS.clone().requires_grad_(True)
        weighted_loss(per_pair_loss, torch.cat([torch.tensor([0.8]), others]), "mean").backward()
        assert_close(per_pair_loss.grad[0], torch.tensor(0.2))


def test_normalized_with_all_zero_weights_is_zero_without_nan():
    per_pair_loss = PER_PAIR_LOSS.clone().requires_grad_(True)
    loss = weighted_loss(per_pair_loss, torch.zeros(4), "normalized")
    loss.backward()
    assert_close(loss, torch.tensor(0.0), rtol=0, atol=0)
    assert_close(per_pair_loss.grad, torch.zeros(4), rtol=0, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("objective", sorted(OBJECTIVE_CALLS))
def test_zero_weight_gives_that_pair_exactly_zero_gradient(objective, reduction):
    chosen = torch.tensor([0.5, 3.0, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, -2.0, 2.0], requires_grad=True)
    loss = weighted_loss(OBJECTIVE_CALLS[objective](chosen, rejected), torch.tensor([0.7, 0.0, 0.4]), reduction)
    loss.backward()
    assert chosen.grad[1] == 0 and rejected.grad[1] == 0
    assert (chosen.grad[[0, 2]] != 0).all() and (rejected.grad[[0, 2]] != 0).all()


@pytest.mark.parametrize("objective", sorted(OBJECTIVE_CALLS))
def test_unit_weights_give_the_unweighted_objective(objective):
    chosen, rejected = torch.tensor([0.5, 3.0, -1.0]), torch.tensor([0.0, -2.0, 2.0])
    per_pair_loss = OBJECTIVE_CALLS[objective](chosen, rejected)
    assert_close(weighted_loss(per_pair_loss, torch.ones(3)), per_pair_loss.mean(), rtol=0, atol=0)


def test_weights_get_no_gradient():
    weights = WEIGHTS.clone().requires_grad_(True)
    per_pair_loss = PER_PAIR_LOSS.clone().requires_grad_(True)
    weighted_loss(per_pair_loss, weights, "normalized").backward()
    assert weights.grad is None
    assert per_pair_loss.grad is not None


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(reduction):
    per_pair_loss = torch.randn(6, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda loss: weighted_loss(loss, weights, reduction), (per_pair_loss,))


def test_half_precision_inputs_give_float32():
    loss = weighted_loss(PER_PAIR_LOSS.to(torch.bfloat16), WEIGHTS.to(torch.bfloat16), "normalized")
    assert loss.dtype == torch.float32
    assert_close(loss, torch.tensor(2.25))


def test_rejects_unknown_reduction():
    with pytest.raises(ConfigError, match="mean, normalized"):
        weighted_loss(PER_PAIR_LOSS, WEIGHTS, "sum")


def test_rejects_shape_mismatch():
    """A (b, 1) weight would broadcast against (b,) losses into a (b, b) matrix: refused."""
    with pytest.raises(ConfigError, match="same shape"):
        weighted_loss(PER_PAIR_LOSS, WEIGHTS.unsqueeze(-1))
