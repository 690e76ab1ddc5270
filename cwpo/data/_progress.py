"""Silence ``datasets``' progress bars inside cwpo's own small transformations (they flood logs and tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Disable ``datasets`` progress bars for the block, then restore the user's setting."""
    import importlib

    hf_tqdm = importlib.import_module("datasets.utils.tqdm")  # the module; ``datasets.utils.tqdm`` is also a class

    was_disabled = hf_tqdm.are_progress_bars_disabled()
    hf_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            hf_tqdm.enable_progress_bars()
