"""The pipeline end to end on a micro synthetic experiment: it finishes, resumes after a crash without redoing
finished stages, and a change to one method reruns only that method's stages."""

from __future__ import annotations

import json

import pytest

from cwpo.pipeline import experiment as experiment_module
from cwpo.pipeline.config import ExperimentConfig, experiment_config
from cwpo.pipeline.experiment import Experiment, method_family
from cwpo.pipeline.methods import parse_method

pytestmark = pytest.mark.slow


def micro_config(run_dir, methods) -> ExperimentConfig:
    one_epoch = {"trainer": {"max_epochs": 1}}
    return experiment_config({
        "name": "micro",
        "run_dir": str(run_dir),
        "seeds": [0],
        "methods": list(methods),
        "data": {"dataset": {"name": "synthetic", "args": {"n_pairs": 240, "n_test_pairs": 12}}, "test_prompts": 12},
        **{stage: one_epoch for stage in ("annotator", "ws_sft", "ws_policy", "sft", "policy")},
        "pretrain": {"texts": 64},
        "eval": {"max_new_tokens": 6},
    })  # fmt: skip


def stage_names(labels: list[str]) -> list[str]:
    return [label.split("/")[0] for label in labels]


def test_crash_after_sft_resumes_there_and_one_changed_method_reruns_alone(tmp_path, monkeypatch):
    config = micro_config(tmp_path, ["cw-dpo", "ws-dpo", "top-30"])

    # 1. Crash in the first preference-optimisation stage: everything before it has finished.
    real_po = Experiment.po

    def crash(self, *args, **kwargs):
        if self.stages.dry:  # the planning pass runs no stage
            return real_po(self, *args, **kwargs)
        raise RuntimeError("killed during PO")

    monkeypatch.setattr(Experiment, "po", crash)
    first = Experiment(config)
    with pytest.raises(RuntimeError, match="killed during PO"):
        first.run()
    finished = ["pretrain", "annotator", "annotate", "ws_sft", "ws_policy", "ws_annotate", "sft", "generate", "sft",
                "generate"]  # fmt: skip
    assert stage_names(first.stages.computed) == finished

    # 2. The rerun reuses every finished stage and does only what was left.
    monkeypatch.setattr(Experiment, "po", real_po)
    second = Experiment(config)
    rows = second.run()
    # held-out accuracy reads each model's test log-probs (stage test_logps), once per model: top-30 reuses the
    # weak-label SFT model's table that cw-dpo computed
    assert stage_names(second.stages.reused) == [*finished, "test_logps"]
    per_method = ["po", "generate", "test_logps", "test_logps", "heldout"]
    assert stage_names(second.stages.computed) == per_method * 2 + ["po", "generate", "test_logps", "heldout"]
    assert [(r["method"], r["family"], r["objective"]) for r in rows] == [
        ("cw-dpo", "CW-PO", "DPO"), ("ws-dpo", "WS-DPO", "DPO"), ("top-30", "Top-30 %", "DPO")
    ]  # fmt: skip
    for row in rows:
        assert row["n"] == 12 and 0.0 <= row["gra"] <= 100.0 and row["gra"] + row["ties_pct"] <= 100.0
        assert row["wins"] + row["ties"] + row["losses"] == 12
        assert 0.0 <= row["eos_rate"] <= 1.0 and len(row["per_prompt"]["reward"]) == 12
        assert 0.0 <= row["label_gold_agreement"] <= 1.0 and 0.0 <= row["heldout_gold_accuracy"] <= 100.0

    # 3. Changing one method (top-30 -> top-40) reruns only that method's PO and generation.
    third = Experiment(micro_config(tmp_path, ["cw-dpo", "ws-dpo", "top-40"]))
    third.run()
    assert stage_names(third.stages.computed) == ["po", "generate", "test_logps", "heldout"]
    assert len(third.stages.reused) == len(finished) + 11


def test_methods_land_in_their_table_cells():
    assert method_family(parse_method("human")) == ("Human", "DPO")
    assert method_family(parse_method("ws-dpo")) == ("WS-DPO", "DPO")
    assert method_family(parse_method("cw-rdpo")) == ("CW-PO", "rDPO")
    assert method_family(parse_method("cw-ipo@rank")) == ("CW-PO (rank)", "IPO")
    assert method_family(parse_method("online-cw-dpo")) == ("Online CW-PO", "DPO")
    assert method_family(parse_method("online-dpo")) == ("Online (c = 1)", "DPO")


def test_online_cw_dpo_runs_from_the_offline_annotator_and_sft(tmp_path):
    """Online CW-DPO shares the annotator and the weak-label SFT with offline CW-DPO and adds only its own PO."""
    offline = Experiment(micro_config(tmp_path, ["cw-dpo"]))
    offline.run()
    online = Experiment(micro_config(tmp_path, ["cw-dpo", "online-cw-dpo"]))
    rows = online.run()
    assert stage_names(online.stages.computed) == ["po", "generate"]
    assert [(r["method"], r["family"]) for r in rows] == [("cw-dpo", "CW-PO"), ("online-cw-dpo", "Online CW-PO")]
    summaries = [json.loads(path.read_text())["summary"] for path in online.run_dir.glob("po/*/DONE.json")]
    online_summary = next(s for s in summaries if "gold_agreement_last_epoch" in s)
    assert 0.0 <= online_summary["gold_agreement_last_epoch"] <= 1.0 and online_summary["train_loss"] is not None
    assert rows[1]["n"] == 12 and 0.0 <= rows[1]["gra"] <= 100.0
    assert method_family(parse_method("ipo")) == ("Weak (c = 1)", "IPO")
    assert method_family(parse_method("top-30")) == ("Top-30 %", "DPO")
    assert experiment_module.OBJECTIVE_TITLES["rdpo"] == "rDPO"


def test_a_run_killed_inside_annotate_resumes_from_the_parts_it_scored(tmp_path, monkeypatch):
    """``cwpo run`` dies after annotate wrote two of its batches; the rerun keeps those scores (the stage folder's
    ``d_u_labelled.jsonl.parts``), scores only the rest, and writes what an uninterrupted run writes."""
    from cwpo.annotation import annotate as annotate_module

    writer = annotate_module._PartWriterCallback
    write = writer.write_on_batch_end
    scored: list[int] = []

    def recording(self, trainer, pl_module, prediction, *args, **kwargs):
        write(self, trainer, pl_module, prediction, *args, **kwargs)
        scored.append(len(prediction["index"]))
        if kill_after and len(scored) == kill_after:
            raise RuntimeError("killed during annotate")

    monkeypatch.setattr(writer, "write_on_batch_end", recording)
    kill_after = 2
    killed = Experiment(micro_config(tmp_path / "killed", ["cw-dpo"]))
    annotator = killed.annotator(0)
    with pytest.raises(RuntimeError, match="killed during annotate"):
        killed.annotate(0, annotator)
    before = sum(scored)
    assert len(scored) == 2 and before > 0

    kill_after, scored[:] = 0, []
    resumed = Experiment(micro_config(tmp_path / "killed", ["cw-dpo"])).annotate(0, annotator)
    total = resumed.summary["n_pairs"]
    assert sum(scored) == total - before  # only the batches the kill left undone

    scored[:] = []
    fresh = Experiment(micro_config(tmp_path / "fresh", ["cw-dpo"]))
    uninterrupted = fresh.annotate(0, fresh.annotator(0))
    assert sum(scored) == total
    name = "d_u_labelled.jsonl"
    assert (resumed.path / name).read_bytes() == (uninterrupted.path / name).read_bytes()
