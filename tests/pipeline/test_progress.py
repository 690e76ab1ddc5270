"""``cwpo run``'s console: one ``[k/N]`` line per stage (stage, method, seed, elapsed, ETA) on stderr, N from the
planning pass, cached stages counted; index.json beside the stages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

CONFIG = """\
name: progress
seeds: [0]
methods: [human, cw-dpo]
data:
  dataset: {{name: synthetic, args: {{n_pairs: 120, n_test_pairs: 6}}}}
  test_prompts: 6
annotator: {{trainer: {{max_epochs: 1}}}}
sft: {{trainer: {{max_epochs: 1}}}}
policy: {{trainer: {{max_epochs: 1}}}}
pretrain: {{texts: 32}}
eval: {{max_new_tokens: 4}}
run_dir: {run_dir}
"""
LINE = re.compile(r"^\S+ cwpo\.pipeline\.stages: \[ *(\d+)/(\d+)\] (\w+) (\(all methods\)|\S+)( seed \d+)?: (done in [\d a-z]+|cached); "
                  r"elapsed [\d a-z]+, ETA [\d a-z?]+$")  # fmt: skip


def _cwpo_run(tmp_path: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "experiment.yaml"
    config.write_text(CONFIG.format(run_dir=tmp_path / "run"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cwpo.cli", "run", "--config", str(config)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)  # fmt: skip


def test_one_progress_line_per_stage_then_all_cached(tmp_path):
    first = _cwpo_run(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = [m for m in map(LINE.match, first.stderr.splitlines()) if m]
    # pretrain; annotator, annotate; SFT on human and on weak labels, each with its generations; per method PO,
    # generations, the test pairs' log-probs under its SFT model and under it, held-out accuracy.
    n = 1 + 2 + 2 * 2 + 2 * 5
    assert [int(m[1]) for m in lines] == list(range(1, n + 1)) and {int(m[2]) for m in lines} == {n}
    assert all(m[6].startswith("done in") for m in lines)
    assert [m[3] for m in lines] == ["pretrain", "annotator", "annotate", "sft", "generate", "sft", "generate", "po",
                                     "generate", "test_logps", "test_logps", "heldout", "po", "generate", "test_logps",
                                     "test_logps", "heldout"]  # fmt: skip
    who = [(m[3], m[4]) for m in lines]
    assert who[0] == ("pretrain", "(all methods)") and ("sft", "human") in who and ("po", "cw-dpo") in who
    assert all(m[5] == " seed 0" for m in lines[1:])
    assert not re.search(r"stage \w+/[0-9a-f]{16}: done", first.stderr)  # no hash-named stage lines
    for done in (tmp_path / "run").glob("*/*/DONE.json"):
        assert json.loads(done.read_text())["seconds"] >= 0

    index = json.loads((tmp_path / "run" / "index.json").read_text())
    assert {(e["stage"], e["method"]) for e in index["stages"] if e["stage"] == "po"} == {("po", "human"),
                                                                                         ("po", "cw-dpo")}  # fmt: skip
    assert all(e["done"] and (tmp_path / "run" / e["folder"] / "DONE.json").exists() for e in index["stages"])

    again = _cwpo_run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    cached = [m for m in map(LINE.match, again.stderr.splitlines()) if m]
    assert len(cached) == n and all(m[6] == "cached" for m in cached)
    assert f"stages computed: 0, reused: {n}" in again.stdout
