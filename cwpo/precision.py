"""Choosing the compute precision: bf16 where the hardware runs it fast and the model is big enough to gain.

``precision="auto"`` resolves to Lightning's ``bf16-mixed`` (float32 master weights, each matmul under
``torch.autocast(bfloat16)``) on a CUDA device that supports bf16, or on a CPU with native bf16 matmul units
(``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``), for models whose hidden size is at least
:data:`MIN_BF16_HIDDEN_SIZE`; otherwise to ``32-true``. Measured on a 2-core AVX-512-BF16 CPU (see
``benchmarks/dpo_vs_trl.py`` and ``docs/PERFORMANCE.md``): a 2048² bf16 matmul runs about 4-5x the float32 rate and a
SmolLM2-135M LoRA DPO epoch about 2x, while a 64-wide, 3-layer model trains 1.7x *slower* under autocast (its
matmuls are too small to amortise the casts).
"""

from __future__ import annotations

import functools
from pathlib import Path

from cwpo.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
"""What a user may ask for; ``resolve_precision`` turns it into a Lightning precision string."""

LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}

MIN_BF16_HIDDEN_SIZE = 256
"""Below this hidden size ``auto`` keeps float32: tiny models run slower under bf16 autocast on a CPU."""

_FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 matmul instructions (AMX or AVX-512 BF16). False where it cannot tell."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _FAST_BF16_CPU_FLAGS)


def hardware_has_fast_bf16(accelerator: str | None = None) -> bool:
    """Whether bf16 compute is fast on the device a run will use (``accelerator``: ``cpu``, ``gpu``/``cuda`` or auto)."""
    import torch

    use_cuda = accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
    if use_cuda:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def resolve_precision(precision: str, *, hidden_size: int | None, accelerator: str | None = None) -> str:
    """The Lightning precision for ``precision`` (``auto``, ``fp32`` or ``bf16``) and a model of ``hidden_size``.

    Raises:
        ConfigError: for a value outside :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        big_enough = hidden_size is None or hidden_size >= MIN_BF16_HIDDEN_SIZE
        precision = "bf16" if big_enough and hardware_has_fast_bf16(accelerator) else "fp32"
    return LIGHTNING_PRECISION[precision]
