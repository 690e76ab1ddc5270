"""The shipped real-data experiment, ``configs/experiments/hh-harmless-local_minilm_to_smollm2.yaml``, end to end
through ``cwpo run`` at CI size, so its wiring cannot rot: the real local HH-RLHF file (read in place through the
config's relative path), MiniLM's and SmolLM2's real tokenizers, chat template and GGUF weights, LoRA, every method,
the no-gold evaluation and its report, and a rerun that reuses every stage.

CI size: the config as shipped, with about 16 pairs per part (48 pairs read: 16 test, 16 D_L, 16 D_U), a 96-token
budget, one epoch (one step) per stage and no warm-up, 8 new tokens, and the strong policy and WS-DPO's weak policy
truncated to their first 4 and 2 layers (the same code path, about 7x less compute; only the weights' depth
differs). Marked ``slow`` (real weights); the default ``pytest`` run (addopts ``-m 'not gpu'``, as CI runs it)
includes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import HH_HARMLESS_TEST, REPO

pytestmark = pytest.mark.slow

CONFIG = REPO / "configs" / "experiments" / "hh-harmless-local_minilm_to_smollm2.yaml"


def ci_config(tmp_path: Path) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["data"]["dataset"]["path"] == "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    config["run_dir"] = str(tmp_path / "run")
    config["data"]["dataset"]["args"]["limit"] = 48
    config["data"]["dataset"]["test_fraction"] = 1 / 3
    config["data"]["split_ratio"] = 0.5
    config["data"].update(max_length=96, test_prompts=4)
    for stage in ("annotator", "ws_sft", "ws_policy", "sft", "policy"):
        config[stage]["trainer"]["max_epochs"] = 1
    for stage in ("ws_sft", "ws_policy", "sft", "policy"):  # one step each: a warm-up would be all of it (lr 0)
        config[stage]["model"]["optim"]["warmup_steps"] = 0
    config["ws_sft"]["model"]["backbone"]["config"]["num_hidden_layers"] = 2
    config["sft"]["model"]["backbone"]["config"] = {"num_hidden_layers": 4}
    config["eval"].update(max_new_tokens=8, max_prompt_length=64, show_generations=2)
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _ids(path: Path) -> set[str]:
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line}


def test_the_real_config_runs_offline_end_to_end_and_resumes(tmp_path, monkeypatch, capsys):
    if not HH_HARMLESS_TEST.exists():
        pytest.skip(f"real data not present: {HH_HARMLESS_TEST}")
    from cwpo.cli import main

    monkeypatch.chdir(REPO)  # the config's data path is relative to the repository root
    config = ci_config(tmp_path)
    assert main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    report = (run / "report" / "report.md").read_text()
    rows = json.loads((run / "report" / "results.json").read_text())["rows"]

    # every method has a held-out accuracy vs the human labels, over the same test pairs
    assert [r["method"] for r in rows] == ["human", "ws-dpo", "dpo", "cw-dpo"]
    n_test = {r["heldout_pairs"] for r in rows}
    assert len(n_test) == 1 and 10 <= n_test.pop() <= 16
    for r in rows:
        assert 0 <= r["heldout_human_accuracy"] <= 100 and r["heldout_human_se"] > 0
        assert "gra" not in r and "heldout_gold_accuracy" not in r  # no judge, no gold
    for title in ("## Held-out preference accuracy vs the human labels", "## Paired comparisons of held-out accuracy",
                  "## Weak annotator on the held-out test pairs", "## Generations: the first 2 test prompts",
                  "## Wall time per stage"):  # fmt: skip
        assert title in report, title
    for line in ("| cw-dpo − ws-dpo | held-out acc. vs human (points) |", "| cw-dpo − dpo |", "| cw-dpo − human |",
                 "| sft (human labels) | log π_SFT − log π_base |", "| sft (weak labels) |", "| sft (ws labels) |"):  # fmt: skip
        assert line in report, line
    assert (run / "report" / "annotator_test_agreement_vs_confidence.png").stat().st_size > 0
    generations = report.split("## Generations")[1].split("## Wall time")[0]
    for name in ("human", "ws-dpo", "dpo", "cw-dpo", "sft (human)", "sft (weak)", "sft (ws)"):
        assert f"| {name} |" in generations, name

    # the test part is kept out of every training stage
    test_ids = _ids(next(run.glob("annotate_test/*/test_labelled.jsonl")))
    for labelled in (*run.glob("annotate/*/d_u_labelled.jsonl"), *run.glob("ws_annotate/*/d_u_labelled.jsonl")):
        assert test_ids and not test_ids & _ids(labelled)

    # per-stage wall times: in the report, in stage_times.json, one entry per stage folder
    times = json.loads((run / "stage_times.json").read_text())
    assert len(times) == len(list(run.glob("*/*/DONE.json"))) and all(t["computed"] for t in times)
    assert {t["stage"] for t in times} >= {"dequantize", "annotator", "annotate", "annotate_test", "ws_sft", "sft", "po",
                                           "test_logps", "heldout", "generate"}  # fmt: skip
    assert "wall time" in out

    # resumable: a second run computes nothing
    assert main(["run", "--config", str(config)]) == 0
    times = json.loads((run / "stage_times.json").read_text())
    assert times and not any(t["computed"] for t in times)
