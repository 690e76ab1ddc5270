"""Method names parse into the label source, objective and weighting the paper's tables mean."""

from __future__ import annotations

import pytest

from cwpo.errors import ConfigError
from cwpo.pipeline.methods import MethodSpec, parse_method


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("human", MethodSpec("human", "human")),
        ("human-100", MethodSpec("human-100", "human_all")),
        ("ws-dpo", MethodSpec("ws-dpo", "ws")),
        ("ipo", MethodSpec("ipo", "weak", objective="ipo")),
        ("cw-dpo", MethodSpec("cw-dpo", "weak", objective="dpo", weighting="confidence")),
        ("cw-rdpo", MethodSpec("cw-rdpo", "weak", objective="rdpo", weighting="confidence")),
        (
            "cw-ipo@sigmoid",
            MethodSpec("cw-ipo@sigmoid", "weak", objective="ipo", weighting="confidence", scheme="sigmoid"),
        ),
        ("top-30", MethodSpec("top-30", "weak", weighting="top_n", top_n_fraction=0.3)),
        ("top-40-ipo", MethodSpec("top-40-ipo", "weak", objective="ipo", weighting="top_n", top_n_fraction=0.4)),
        ("online-cw-dpo", MethodSpec("online-cw-dpo", "weak", weighting="confidence", online=True)),
        ("online-ipo", MethodSpec("online-ipo", "weak", objective="ipo", online=True)),
        (
            "online-cw-rdpo@sigmoid",
            MethodSpec(
                "online-cw-rdpo@sigmoid",
                "weak",
                objective="rdpo",
                weighting="confidence",
                scheme="sigmoid",
                online=True,
            ),
        ),
    ],
)
def test_parse_method(name, expected):
    assert parse_method(name) == expected


@pytest.mark.parametrize("name", ["cw-ppo", "top-0", "top-150", "human-50", "", "online-cw-dpo@rank", "online-dpo@cw"])
def test_unknown_methods_name_the_valid_forms(name):
    with pytest.raises(ConfigError, match="method"):
        parse_method(name)
