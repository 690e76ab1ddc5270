"""The hub code path of every loader: the exact ``datasets.load_dataset`` call a user with hub access runs."""

from __future__ import annotations

import pytest

from cwpo.data import load_hh_rlhf, load_shp, load_tldr, load_ultrafeedback
from tests.data.test_bad_inputs import VALID


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace ``datasets.load_dataset`` with a recorder that serves one valid raw row per call."""
    import datasets

    calls = []

    def load_dataset(path, *args, **kwargs):  # the real signature: load_dataset(path, name=None, ...)
        calls.append((path, args, kwargs))
        source = {"Anthropic/hh-rlhf": "hh-rlhf", "HuggingFaceH4/ultrafeedback_binarized": "ultrafeedback",
                  "openai/summarize_from_feedback": "tldr", "stanfordnlp/SHP": "shp",
                  "trl-lib/tldr-preference": "tldr-trl"}[path]  # fmt: skip
        row = dict(VALID[source]) if source != "tldr-trl" else {"prompt": "POST: P\n\nTL;DR:", "chosen": " a",
                                                                 "rejected": " b"}  # fmt: skip
        if "data_dir" in kwargs and source == "shp":  # the domains' folders hold different posts (not duplicates)
            row["history"] = f"{row['history']} ({kwargs['data_dir']})"
        return [row]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_calls(fake_hub):
    assert len(load_hh_rlhf("helpful-online", "train")) == 1
    assert len(load_hh_rlhf("hh-rlhf", "test")) == 2
    assert len(load_ultrafeedback("test_prefs")) == 1
    assert len(load_tldr("validation")) == 1
    assert len(load_tldr("train", hub="openai/summarize_from_feedback")) == 1
    assert len(load_shp("test", domains=["askbaking", "askacademia"])) == 2  # one row from each domain's folder
    assert len(load_shp("train", domains=None)) == 1
    assert fake_hub == [
        ("Anthropic/hh-rlhf", (), {"split": "train", "data_dir": "helpful-online"}),
        ("Anthropic/hh-rlhf", (), {"split": "test", "data_dir": "harmless-base"}),
        ("Anthropic/hh-rlhf", (), {"split": "test", "data_dir": "helpful-base"}),
        ("HuggingFaceH4/ultrafeedback_binarized", (), {"split": "test_prefs"}),
        ("trl-lib/tldr-preference", (), {"split": "validation"}),
        # the original is published with a loading script that datasets >= 4 refuses: its parquet revision
        (
            "openai/summarize_from_feedback",
            (),
            {"split": "train", "name": "comparisons", "revision": "refs/convert/parquet"},
        ),  # fmt: skip
        ("stanfordnlp/SHP", (), {"data_dir": "askbaking", "split": "test"}),
        ("stanfordnlp/SHP", (), {"data_dir": "askacademia", "split": "test"}),
        ("stanfordnlp/SHP", (), {"split": "train"}),
    ]


def test_hub_ids_and_where(fake_hub):
    data = load_hh_rlhf("harmless-base", "train")
    assert data[0]["id"] == "hh-rlhf-harmless-base-train-0"
    shp = load_shp("test", domains=["askacademia", "askbaking"])
    assert shp["id"] == ["shp-test-0", "shp-test-1"]  # row numbers run on across the domains' folders
