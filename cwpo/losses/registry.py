"""Preference objectives by config name, so a trainer picks one by string and never branches on it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cwpo.errors import ConfigError
from cwpo.losses.dpo import dpo_loss, ipo_loss, rdpo_loss

Objective = Callable[..., torch.Tensor]
"""``objective(chosen_logratios, rejected_logratios, **params) -> per-pair loss``, shapes (b,), (b,) -> (b,).

``params`` are the objective's own keyword arguments (``beta`` for DPO, ``tau`` for IPO, ``beta`` and ``epsilon``
for rDPO), passed straight from the config.
"""

OBJECTIVES: dict[str, Objective] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "rdpo": rdpo_loss,
}
"""Policy objectives by name. Adding one means writing its per-pair function and registering it here."""


def get_objective(name: str) -> Objective:
    """The per-pair objective registered under ``name`` in ``OBJECTIVES``.

    Args:
        name: a key of ``OBJECTIVES`` (``"dpo"``, ``"ipo"``, ``"rdpo"``).

    Returns:
        The function, to be called as ``objective(chosen_logratios, rejected_logratios, **params)``.

    Raises:
        ConfigError: for an unknown name; the message lists the registered ones.
    """
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"unknown objective {name!r}; registered objectives: {', '.join(OBJECTIVES)}") from None
