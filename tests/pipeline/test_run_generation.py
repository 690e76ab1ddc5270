"""``cwpo run``'s eval block reaches generation: stop strings cut every response (and count as ended), and
``backend: vllm`` is refused up front, in one line, where vLLM is not installed."""

from __future__ import annotations

import json

import pytest

from cwpo.errors import ConfigError
from cwpo.pipeline.experiment import Experiment
from tests.pipeline.test_experiment import micro_config


@pytest.mark.slow
def test_eval_stop_strings_cut_the_pipeline_generations(tmp_path):
    config = micro_config(tmp_path, ["human"])
    config.eval.stop_strings = [" "]  # every word after the first would hold one: one-word answers
    rows = Experiment(config).run()
    folders = sorted((tmp_path / "generate").glob("*/generations.jsonl"))
    assert len(folders) == 2  # SFT and PO
    for path in folders:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == 12 and not any(" " in r["response"] for r in records)
        inputs = json.loads((path.parent / "inputs.json").read_text())
        assert inputs["config"]["eval.stop_strings"] == [" "]  # in the generate stage key
    # a cut answer ended: the EOS rate counts it (a 6-token limit, answers of one word and a space)
    assert rows[0]["eos_rate"] > 0.5 and rows[0]["sft_eos_rate"] > 0.5


def test_vllm_backend_without_vllm_is_refused_before_any_stage(tmp_path):
    from cwpo.evaluation.generate import vllm_available

    if vllm_available():
        pytest.skip("vllm is installed here")
    config = micro_config(tmp_path, ["human"])
    config.eval.backend = "vllm"
    with pytest.raises(
        ConfigError, match=r"eval.backend: vllm needs the optional vllm package: pip install 'cwpo\[vllm\]'"
    ):
        Experiment(config)
    assert not (tmp_path / "pretrain").exists()
