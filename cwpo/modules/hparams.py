"""Hyper-parameter plumbing shared by the LightningModules: dataclass arguments as plain data and back, choices."""

from __future__ import annotations

from typing import Any

from cwpo.errors import ConfigError
from cwpo.io import plain_data


def plain_hparams(hparams) -> None:
    """Replace dataclass values (``ModelSpec``, ``LoraSpec``, ``OptimConfig``) in ``hparams`` by dicts, in place, so
    checkpoints hold plain data and load with ``torch.load(weights_only=True)``; the modules accept either form."""
    for key, value in list(hparams.items()):
        hparams[key] = plain_data(value)


def as_config(value: Any, cls: type) -> Any:
    """``value`` as a ``cls`` dataclass: LightningCLI may hand a dataclass argument over as a plain dict."""
    return cls(**value) if isinstance(value, dict) else value


def check_choice(name: str, value: Any, choices: tuple | list | dict) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
