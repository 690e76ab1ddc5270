"""SHP loader, on a fixture in the published schema."""

from __future__ import annotations

import pytest

from cwpo.data import get_filter_report, load_shp
from cwpo.data.shp import domain_name
from cwpo.errors import ConfigError


def test_fixture_rows_paper_domains(fixtures):
    data = load_shp("train", path=fixtures / "shp_train.jsonl")
    report = get_filter_report(data)
    assert (report.n_read, len(data)) == (5, 4)
    assert report.dropped == {"filtered_out": 1}  # askculinary is not one of the paper's four domains
    assert data["domain"] == ["askacademia", "askbaking", "askphilosophy", "askengineers"]
    first = data[0]
    assert first["prompt"] == "\n\nHuman: How do I ask my advisor for more feedback on my thesis drafts?\n\nAssistant:"
    assert (
        first["chosen"] == " Schedule a short meeting and ask which parts they want you to improve first."
    )  # labels 1: A
    assert first["rejected"] == " Just email them every day."
    baking = data[1]  # labels 0: B is preferred
    assert baking["chosen"] == " Your dough was likely under-proofed; let it rise until it doubles and check the yeast."
    assert baking["rejected"] == " Probably."
    assert data["post_id"] == ["p001", "p002", "p004", "p005"] and data["id"][2] == "shp-train-3"


def test_domain_selection_score_ratio_and_bare_prompt(fixtures):
    path = fixtures / "shp_train.jsonl"
    assert len(load_shp("train", path=path, domains=None)) == 5
    one = load_shp("train", path=path, domains=["askbaking"], prompt_format="{history}")
    assert one["prompt"] == ["Why did my bread come out dense?"]
    strong = load_shp("train", path=path, domains=None, min_score_ratio=2.0)
    assert strong["post_id"] == ["p001", "p002", "p003", "p004"]  # p005's ratio is 13/12
    with pytest.raises(ConfigError, match="history"):
        load_shp("train", path=path, prompt_format="no placeholder")


def test_domain_name():
    assert domain_name("askacademia_train") == "askacademia"
    assert domain_name("explainlikeimfive_validation") == "explainlikeimfive"
