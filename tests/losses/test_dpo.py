"""Tests of cwpo/losses/dpo.py: DPO, IPO and rDPO (Eq. 9-11 of CW-PO)."""

import math

import pytest
import torch
from torch.testing import assert_close

from cwpo.errors import ConfigError
from cwpo.losses.dpo import dpo_loss, ipo_loss, rdpo_loss

LOG2 = math.log(2)


def _pair(chosen: list[float], rejected: list[float], dtype: torch.dtype = torch.float32):
    return torch.tensor(chosen, dtype=dtype), torch.tensor(rejected, dtype=dtype)


class TestDPOLoss:
    def test_exact_values(self):
        """-log σ(βh) = log(1 + e^(-βh)) with β = 0.1.

        h = 3 - 1 = 2   -> log(1 + e^-0.2) = 0.5981388694
        h = 0           -> log 2          = 0.6931471806
        h = 0 - 10 = -10 -> log(1 + e^1)  = 1.3132616875
        """
        chosen, rejected = _pair([3.0, 0.5, 0.0], [1.0, 0.5, 10.0])
        loss = dpo_loss(chosen, rejected, beta=0.1)
        assert_close(loss, torch.tensor([0.5981388694, LOG2, 1.3132616875]))

    def test_exact_gradient(self):
        """d/dh of -log σ(βh) is -β σ(-βh): at h = 2, β = 0.1, that is -0.1 · σ(-0.2) = -0.1 · 0.4501660027.

        The chosen log-ratio gets that gradient, the rejected one its negative.
        """
        chosen, rejected = _pair([3.0], [1.0], torch.float64)
        chosen.requires_grad_(True)
        rejected.requires_grad_(True)
        dpo_loss(chosen, rejected, beta=0.1).sum().backward()
        assert_close(chosen.grad, torch.tensor([-0.04501660027], dtype=torch.float64))
        assert_close(rejected.grad, torch.tensor([0.04501660027], dtype=torch.float64))

    def test_gradcheck(self):
        chosen = torch.randn(5, dtype=torch.float64, requires_grad=True)
        rejected = torch.randn(5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda c, r: dpo_loss(c, r, beta=0.5), (chosen, rejected))

    def test_depends_only_on_the_margin(self):
        chosen, rejected = _pair([4.0, -7.0], [3.0, -8.0])
        assert_close(dpo_loss(chosen, rejected, beta=0.5), dpo_loss(chosen - rejected, torch.zeros(2), beta=0.5))

    @pytest.mark.parametrize("beta", [0.0, -0.1, math.inf, math.nan])
    def test_rejects_bad_beta(self, beta):
        chosen, rejected = _pair([1.0], [0.0])
        with pytest.raises(ConfigError, match="beta"):
            dpo_loss(chosen, rejected, beta=beta)

    def test_rejects_shape_mismatch(self):
        with pytest.raises(ConfigError, match="same shape"):
            dpo_loss(torch.zeros(3, 1), torch.zeros(3), beta=0.1)


class TestIPOLoss:
    def test_exact_values(self):
        """(h - 1/(2τ))² with τ = 0.5, so the target margin is 1.

        h = 3 -> 4;  h = 1 -> 0;  h = 0 -> 1;  h = -1 -> 4
        """
        chosen, rejected = _pair([3.0, 2.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0])
        assert_close(ipo_loss(chosen, rejected, tau=0.5), torch.tensor([4.0, 0.0, 1.0, 4.0]))

    def test_length_averaged_exact_value(self):
        """Chosen 6 over 3 tokens -> 2, rejected -2 over 2 tokens -> -1, so h = 3 and (3 - 1)² = 4 at τ = 0.5.

        Without the lengths h = 8 and the loss is (8 - 1)² = 49.
        """
        chosen, rejected = _pair([6.0], [-2.0])
        lengths = {"chosen_lengths": torch.tensor([3]), "rejected_lengths": torch.tensor([2])}
        assert_close(ipo_loss(chosen, rejected, tau=0.5, **lengths), torch.tensor([4.0]))
        assert_close(ipo_loss(chosen, rejected, tau=0.5), torch.tensor([49.0]))

    def test_length_averaged_equals_ipo_on_divided_logratios(self):
        generator = torch.Generator().manual_seed(0)
        chosen, rejected = torch.randn(6, generator=generator) * 20, torch.randn(6, generator=generator) * 20
        chosen_lengths = torch.randint(1, 50, (6,), generator=generator)
        rejected_lengths = torch.randint(1, 50, (6,), generator=generator)
        averaged = ipo_loss(chosen, rejected, tau=0.1, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        assert_close(averaged, ipo_loss(chosen / chosen_lengths, rejected / rejected_lengths, tau=0.1))

    def test_zero_length_response_gives_no_nan(self):
        """A response with no tokens has log-ratio 0; it stays 0, so h = 0 - (-1) = 1 and (1 - 1)² = 0."""
        chosen, rejected = _pair([0.0], [-1.0])
        loss = ipo_loss(chosen, rejected, tau=0.5, chosen_lengths=torch.tensor([0]), rejected_lengths=torch.tensor([1]))
        assert_close(loss, torch.tensor([0.0]))

    @pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
    def test_minimised_at_target_margin(self, tau):
        """At h = 1/(2τ) the loss is 0 with zero gradient, and any other h costs more."""
        target = 1 / (2 * tau)
        chosen = torch.tensor([target], dtype=torch.float64, requires_grad=True)
        loss = ipo_loss(chosen, torch.zeros(1, dtype=torch.float64), tau=tau)
        loss.sum().backward()
        assert_close(loss, torch.zeros(1, dtype=torch.float64))
        assert_close(chosen.grad, torch.zeros(1, dtype=torch.float64))
        nearby = torch.tensor([target - 0.1, target + 0.1, target - 5.0, target + 5.0], dtype=torch.float64)
        assert (ipo_loss(nearby, torch.zeros(4, dtype=torch.float64), tau=tau) > 0).all()

    def test_gradcheck_with_and_without_lengths(self):
        chosen = torch.randn(5, dtype=torch.float64, requires_grad=True)
        rejected = torch.randn(5, dtype=torch.float64, requires_grad=True)
        lengths = {"chosen_lengths": torch.tensor([1, 2, 3, 4, 5]), "rejected_lengths": torch.tensor([5, 4, 3, 2, 1])}
        assert torch.autograd.gradcheck(lambda c, r: ipo_loss(c, r, tau=0.3), (chosen, rejected))
        assert torch.autograd.gradcheck(lambda c, r: ipo_loss(c, r, tau=0.3, **lengths), (chosen, rejected))

    def test_rejects_only_one_length(self):
        chosen, rejected = _pair([1.0], [0.0])
        with pytest.raises(ConfigError, match="both"):
            ipo_loss(chosen, rejected, tau=0.5, chosen_lengths=torch.tensor([3]))

    @pytest.mark.parametrize("tau", [0.0, -1.0])
    def test_rejects_bad_tau(self, tau):
        chosen, rejected = _pair([1.0], [0.0])
        with pytest.raises(ConfigError, match="tau"):
            ipo_loss(chosen, rejected, tau=tau)


class TestRDPOLoss:
    def test_exact_values(self):
        """[(1-ε)(-log σ(βh)) - ε(-log σ(-βh))] / (1-2ε).

        β = 1, ε = 0.25, h = 1: (0.75 · 0.3132616875 - 0.25 · 1.3132616875) / 0.5 = -0.1867383125
        β = 1, ε = 0.25, h = 0: (0.75 - 0.25) · log 2 / 0.5 = log 2
        """
        chosen, rejected = _pair([1.0, 0.0], [0.0, 0.0])
        loss = rdpo_loss(chosen, rejected, beta=1.0, epsilon=0.25)
        assert_close(loss, torch.tensor([-0.1867383125, LOG2]))

    def test_equals_dpo_minus_linear_term(self):
        """-log σ(-z) = -log σ(z) + z turns Eq. 11 into dpo - εβh/(1-2ε); β = 0.5, ε = 0.1, h = 2 gives
        0.3132616875 - 0.1 · 1 / 0.8 = 0.1882616875.
        """
        chosen, rejected = _pair([2.0, 5.0, -3.0], [0.0, 1.0, 4.0])
        loss = rdpo_loss(chosen, rejected, beta=0.5, epsilon=0.1)
        margin = chosen - rejected
        assert_close(loss, dpo_loss(chosen, rejected, beta=0.5) - 0.1 * 0.5 * margin / 0.8)
        assert_close(loss[0], torch.tensor(0.1882616875))

    def test_equals_dpo_at_zero_epsilon(self):
        generator = torch.Generator().manual_seed(1)
        chosen, rejected = torch.randn(8, generator=generator) * 5, torch.randn(8, generator=generator) * 5
        dpo = dpo_loss(chosen, rejected, beta=0.3)
        assert_close(rdpo_loss(chosen, rejected, beta=0.3, epsilon=0.0), dpo, rtol=0, atol=0)
        for epsilon in (1e-3, 1e-5):
            assert_close(rdpo_loss(chosen, rejected, beta=0.3, epsilon=epsilon), dpo, rtol=0, atol=20 * epsilon)

    def test_gradcheck(self):
        chosen = torch.randn(5, dtype=torch.float64, requires_grad=True)
        rejected = torch.randn(5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda c, r: rdpo_loss(c, r, beta=0.5, epsilon=0.2), (chosen, rejected))

    @pytest.mark.parametrize("epsilon", [-0.01, 0.5, 0.7])
    def test_rejects_bad_epsilon(self, epsilon):
        chosen, rejected = _pair([1.0], [0.0])
        with pytest.raises(ConfigError, match="epsilon"):
            rdpo_loss(chosen, rejected, beta=0.1, epsilon=epsilon)

    def test_rejects_bad_beta(self):
        chosen, rejected = _pair([1.0], [0.0])
        with pytest.raises(ConfigError, match="beta"):
            rdpo_loss(chosen, rejected, beta=0.0, epsilon=0.1)


OBJECTIVE_CALLS = {
    "dpo": lambda chosen, rejected: dpo_loss(chosen, rejected, beta=0.1),
    "ipo": lambda chosen, rejected: ipo_loss(chosen, rejected, tau=0.1),
    "ipo_length_averaged": lambda chosen, rejected: ipo_loss(
        chosen,
        rejected,
        tau=0.1,
        chosen_lengths=torch.tensor([1, 7, 3, 1]),
        rejected_lengths=torch.tensor([1, 2, 9, 1]),
    ),
    "rdpo": lambda chosen, rejected: rdpo_loss(chosen, rejected, beta=0.1, epsilon=0.1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("objective", sorted(OBJECTIVE_CALLS))
def test_finite_values_and_gradients_at_extreme_logratios(objective, dtype):
    """Log-ratios of ±1e4 (margins of ±2e4 and 0) give finite float32 losses and finite gradients."""
    chosen = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-1e4, 1e4, 1e4, -1e4], dtype=dtype, requires_grad=True)
    loss = OBJECTIVE_CALLS[objective](chosen, rejected)
    loss.sum().backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


@pytest.mark.parametrize("objective", sorted(OBJECTIVE_CALLS))
def test_bfloat16_inputs_match_float32(objective):
    """Half-precision inputs are upcast before h is formed, so a bf16-exact input gives the float32 loss."""
    chosen = torch.tensor([1.5, -0.25, 96.0, -8.0]).to(torch.bfloat16)
    rejected = torch.tensor([0.5, 0.75, 95.0, 8.0]).to(torch.bfloat16)
    assert_close(
        OBJECTIVE_CALLS[objective](chosen, rejected),
        OBJECTIVE_CALLS[objective](chosen.float(), rejected.float()),
        rtol=0,
        atol=0,
    )
