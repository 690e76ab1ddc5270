"""Every shipped annotator YAML parses with the ``fit`` CLI and builds its module and datamodule (nothing loads:
models are built in ``configure_model``, data in ``setup``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cwpo import fit
from cwpo.models import as_model_spec
from cwpo.modules.annotator import AnnotatorModule

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "annotator").glob("*.yaml"))


def test_the_four_configs_are_shipped():
    assert {c.name for c in CONFIGS} >= {"synthetic.yaml", "hh_minilm.yaml", "opt125m_hh.yaml", "qwen05b_hh.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_starts_with_its_command(config, tmp_path, monkeypatch):
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith("# python -m cwpo.fit --model annotator --config configs/annotator/" + config.name)
    monkeypatch.chdir(tmp_path)
    cli = fit.build_cli("annotator", ["--config", str(config)], run=False)
    assert isinstance(cli.model, AnnotatorModule) and cli.model.model is None  # nothing loaded yet
    linked = as_model_spec(cli.datamodule.tokenizer_spec)  # a ModelSpec or its fields, as the CLI link passes it
    assert linked.name_or_path == cli.model.backbone.name_or_path


def test_the_synthetic_config_also_builds_the_pairrm_annotator(tmp_path, monkeypatch):
    from cwpo.modules.annotator import PairRMModule

    monkeypatch.chdir(tmp_path)
    synthetic = next(c for c in CONFIGS if c.name == "synthetic.yaml")
    cli = fit.build_cli("pairrm", ["--config", str(synthetic), "--model.max_response_tokens", "24"], run=False)
    assert isinstance(cli.model, PairRMModule) and cli.model.max_response_tokens == 24
