"""Tests of cwpo/losses/confidence.py: confidence from the annotator margin (Eq. 8, Table 5 of CW-PO)."""

import math

import pytest
import torch
from torch.testing import assert_close

from cwpo.errors import ConfigError, DataError
from cwpo.losses.confidence import CONFIDENCE_SCHEMES, confidence_from_margin, top_n_weights

LN3 = math.log(3)


class TestConfidenceFromMargin:
    def test_cw_exact_values(self):
        """2σ(|Δ|) - 1: σ(ln 3) = 3/4 -> 0.5; σ(2 ln 3) = 9/10 -> 0.8; Δ = 0 -> 0; the sign of Δ is ignored."""
        margin = torch.tensor([LN3, -LN3, 2 * LN3, 0.0])
        assert_close(confidence_from_margin(margin), torch.tensor([0.5, 0.5, 0.8, 0.0]))

    def test_other_schemes_exact_values(self):
        """For Δ = (ln 3, -2, 0): σ(|Δ|) = (3/4, 0.8807970780, 1/2); |Δ| = (ln 3, 2, 0); uniform = 1."""
        margin = torch.tensor([LN3, -2.0, 0.0])
        assert_close(confidence_from_margin(margin, "sigmoid"), torch.tensor([0.75, 0.8807970780, 0.5]))
        assert_close(confidence_from_margin(margin, "margin"), torch.tensor([LN3, 2.0, 0.0]))
        assert_close(confidence_from_margin(margin, "uniform"), torch.ones(3))

    def test_rank_exact_values(self):
        """Empirical CDF of |Δ| = (0.5, 2, 1, 0): 2/4, 4/4, 3/4, 1/4. Ties share a value: |Δ| = (1, 1, 3) -> 2/3, 2/3, 1."""
        assert_close(
            confidence_from_margin(torch.tensor([0.5, -2.0, 1.0, 0.0]), "rank"), torch.tensor([0.5, 1, 0.75, 0.25])
        )
        assert_close(confidence_from_margin(torch.tensor([1.0, -1.0, 3.0]), "rank"), torch.tensor([2 / 3, 2 / 3, 1.0]))

    def test_minmax_exact_values(self):
        """(|Δ| - min) / (max - min) for |Δ| = (0.5, 2, 1, 0): 0.25, 1, 0.5, 0. All-equal margins give 1."""
        assert_close(
            confidence_from_margin(torch.tensor([0.5, -2.0, 1.0, 0.0]), "minmax"), torch.tensor([0.25, 1, 0.5, 0])
        )
        assert_close(confidence_from_margin(torch.tensor([2.0, -2.0]), "minmax"), torch.ones(2))

    def test_cw_is_in_unit_interval_and_zero_at_zero(self):
        margin = torch.arange(-150, 151) / 10  # -15.0, -14.9, ..., 15.0 with an exact 0 in the middle
        confidence = confidence_from_margin(margin)
        assert (confidence >= 0).all() and (confidence < 1).all()
        assert confidence[150] == 0  # margin 0

    @pytest.mark.parametrize("scheme", sorted(CONFIDENCE_SCHEMES))
    def test_symmetric_in_the_sign_of_the_margin(self, scheme):
        margin = torch.randn(20, generator=torch.Generator().manual_seed(0)) * 4
        assert_close(confidence_from_margin(margin, scheme), confidence_from_margin(-margin, scheme), rtol=0, atol=0)

    @pytest.mark.parametrize("scheme", sorted(CONFIDENCE_SCHEMES))
    def test_monotone_in_absolute_margin(self, scheme):
        margin = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 4
        order = margin.abs().argsort()
        confidence = confidence_from_margin(margin, scheme)[order]
        assert (confidence[1:] >= confidence[:-1]).all()

    @pytest.mark.parametrize("scheme", ["cw", "sigmoid", "margin", "rank", "minmax"])
    def test_strictly_monotone_for_distinct_margins(self, scheme):
        confidence = confidence_from_margin(torch.tensor([0.0, -0.1, 0.5, -1.0, 3.0, 8.0]), scheme)
        assert (confidence[1:] > confidence[:-1]).all()

    @pytest.mark.parametrize("scheme", ["cw", "sigmoid", "margin"])
    def test_gradcheck(self, scheme):
        margin = torch.tensor([-2.0, -0.3, 0.4, 5.0], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda m: confidence_from_margin(m, scheme), (margin,))

    def test_half_precision_margin_gives_float32(self):
        confidence = confidence_from_margin(torch.tensor([LN3, -LN3], dtype=torch.bfloat16))
        assert confidence.dtype == torch.float32
        assert_close(confidence, torch.tensor([0.5, 0.5]), atol=1e-2, rtol=0)

    def test_unknown_scheme_lists_the_valid_ones(self):
        with pytest.raises(ConfigError) as error:
            confidence_from_margin(torch.zeros(2), "softmax")
        for scheme in ("cw", "sigmoid", "margin", "uniform", "rank", "minmax"):
            assert scheme in str(error.value)


class TestTopNWeights:
    def test_exact_values(self):
        """The top 40 % of 5 pairs is ceil(2) = 2 pairs: the two 0.9s at indices 1 and 3."""
        weights = top_n_weights(torch.tensor([0.1, 0.9, 0.5, 0.9, 0.3]), 0.4)
        assert_close(weights, torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))

    def test_ties_keep_the_lower_index(self):
        """Half of 4 pairs is 2; three pairs tie at 0.5, so the first two of them are kept."""
        weights = top_n_weights(torch.tensor([0.1, 0.5, 0.5, 0.5]), 0.5)
        assert_close(weights, torch.tensor([0.0, 1.0, 1.0, 0.0]))

    def test_many_ties_keep_the_lowest_indices(self):
        """50 pairs at 1.0 (even indices) and 50 at 0.0: the top 25 % are the first 25 of the 1.0s, indices 0..48.

        Large enough that an unstable sort would pick other tied indices.
        """
        confidence = torch.zeros(100)
        confidence[::2] = 1.0
        expected = torch.zeros(100)
        expected[0:50:2] = 1.0
        assert_close(top_n_weights(confidence, 0.25), expected)

    @pytest.mark.parametrize(
        ("n", "fraction", "expected_count"),
        [
            (10, 0.3, 3),
            (100, 0.07, 7),  # 100 · 0.07 = 7.000000000000001 in floating point
            (100, 0.14, 14),
            (10, 0.25, 3),
            (1000, 0.3, 300),
            (1000, 0.35, 350),
            (3, 0.5, 2),
            (7, 1.0, 7),
            (7, 0.0, 0),
            (0, 0.3, 0),
        ],
    )
    def test_keeps_ceil_of_n_times_fraction(self, n, fraction, expected_count):
        weights = top_n_weights(torch.rand(n, generator=torch.Generator().manual_seed(n)), fraction)
        assert weights.dtype == torch.float32
        assert set(weights.tolist()) <= {0.0, 1.0}
        assert int(weights.sum()) == expected_count

    def test_keeps_the_most_confident(self):
        confidence = torch.rand(200, generator=torch.Generator().manual_seed(2))
        kept = top_n_weights(confidence, 0.3).bool()
        assert confidence[kept].min() >= confidence[~kept].max()

    @pytest.mark.parametrize("fraction", [-0.1, 1.5])
    def test_rejects_fraction_out_of_range(self, fraction):
        with pytest.raises(ConfigError, match="fraction"):
            top_n_weights(torch.rand(5), fraction)

    def test_rejects_non_1d(self):
        with pytest.raises(ConfigError, match="1-D"):
            top_n_weights(torch.rand(2, 3), 0.5)

    def test_rejects_nan(self):
        with pytest.raises(DataError, match="NaN"):
            top_n_weights(torch.tensor([0.1, float("nan")]), 0.5)
