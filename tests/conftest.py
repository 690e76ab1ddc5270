"""Test-wide settings: no hub access, deterministic CPU threads, and the path of the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The hub is unreachable here and in CI: fail fast instead of retrying downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests use tiny models: one thread is faster than two (no hand-off cost per small op) and keeps
# parallel test processes from oversubscribing a 2-core machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HH_HARMLESS_TEST = SHARED / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture(scope="session")
def hh_harmless_test_path() -> Path:
    """The real HH-RLHF harmless-base test file, read in place from ../shared."""
    if not HH_HARMLESS_TEST.exists():
        pytest.skip(f"real data not present: {HH_HARMLESS_TEST} (a checkout outside the team has no ../shared)")
    return HH_HARMLESS_TEST


@pytest.fixture
def fresh_log_streams(monkeypatch):
    """No '--- Logging error ---' tracebacks in this test's stderr: a log handler made during an earlier test can hold
    that test's closed capture stream; with ``logging.raiseExceptions`` off, writing to it is silently skipped (as a
    log record that cannot be written is in production)."""
    import logging

    monkeypatch.setattr(logging, "raiseExceptions", False)
