"""Tests of cwpo/losses/__init__.py: the public API, and that importing it stays light."""

import subprocess
import sys
from pathlib import Path

import cwpo.losses

REPO_ROOT = Path(__file__).resolve().parents[2]

PUBLIC_API = {
    "bt_loss",
    "dpo_loss",
    "ipo_loss",
    "rdpo_loss",
    "pairrm_loss",
    "pairrm_score",
    "confidence_from_margin",
    "top_n_weights",
    "weighted_loss",
    "OBJECTIVES",
    "get_objective",
    "sequence_logps",
    "response_logps_from_hidden",
}


def test_exports_the_public_api():
    assert PUBLIC_API <= set(cwpo.losses.__all__)
    assert all(hasattr(cwpo.losses, name) for name in cwpo.losses.__all__)


def test_import_pulls_in_no_heavy_library():
    """Run in a fresh interpreter: this test process may have imported anything already."""
    heavy = ("lightning", "pytorch_lightning", "transformers", "datasets", "peft", "torchmetrics")
    code = f"import sys, cwpo.losses; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "[]"
