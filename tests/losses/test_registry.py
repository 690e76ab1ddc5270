"""Tests of cwpo/losses/registry.py: objectives picked by config name."""

import pytest
import torch

from cwpo.errors import ConfigError
from cwpo.losses.dpo import dpo_loss, ipo_loss, rdpo_loss
from cwpo.losses.registry import OBJECTIVES, get_objective

PARAMS = {"dpo": {"beta": 0.1}, "ipo": {"tau": 0.1}, "rdpo": {"beta": 0.1, "epsilon": 0.1}}


def test_registered_objectives():
    assert OBJECTIVES == {"dpo": dpo_loss, "ipo": ipo_loss, "rdpo": rdpo_loss}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_get_objective_returns_a_per_pair_loss(name):
    objective = get_objective(name)
    loss = objective(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 0.0]), **PARAMS[name])
    assert objective is OBJECTIVES[name]
    assert loss.shape == (3,)


def test_unknown_objective_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="dpo, ipo, rdpo"):
        get_objective("kto")
