"""Small helpers shared by the loss functions: dtype promotion and argument checks."""

from __future__ import annotations

import math

import torch

from cwpo.errors import ConfigError


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the losses compute and return in: float32, or float64 when any input is float64.

    float16/bfloat16 inputs are upcast: ``logsigmoid`` and squares of log-ratios in half precision lose the
    small differences that preference losses are made of.
    """
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def check_positive(name: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is a finite number > 0 (a Python number, never a tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def check_same_shape(first_name: str, first: torch.Tensor, second_name: str, second: torch.Tensor) -> None:
    """Raise ConfigError when two per-pair tensors differ in shape (broadcasting them would be a silent bug)."""
    if first.shape != second.shape:
        raise ConfigError(
            f"{first_name} and {second_name} must have the same shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )
