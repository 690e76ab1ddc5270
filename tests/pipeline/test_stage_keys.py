"""A stage's key is everything it reads: the audit of the stages' declared config fields on a recorded run, every
leaf of the config changed in turn (exactly the stages that read it, and those downstream, get new keys), a local
data file edited in place, the code fingerprint, and index.json."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest

from cwpo.models import LoraSpec
from cwpo.pipeline import experiment as experiment_module
from cwpo.pipeline.config import ExperimentConfig, experiment_config
from cwpo.pipeline.experiment import ORCHESTRATION_FIELDS, Experiment
from cwpo.pipeline.stages import ReadRecorder, code_fingerprint

pytestmark = pytest.mark.slow

# Every kind of stage: pretrain, annotator, annotate, ws_sft/ws_policy/ws_annotate, SFT on human, all-human and
# weak labels, PO (human, weak uniform, weak confidence, a re-weighting scheme, online), generation, held-out.
METHODS = ["human", "human-100", "ws-dpo", "dpo", "cw-dpo", "cw-ipo@sigmoid", "online-cw-dpo"]
ONE_EPOCH = {"trainer": {"max_epochs": 1}}


def audit_values(run_dir) -> dict[str, Any]:
    """The audited experiment, as its YAML would say it."""
    return {
        "name": "keys",
        "run_dir": str(run_dir),
        "seeds": [0],
        "methods": list(METHODS),
        "data": {"dataset": {"name": "synthetic", "args": {"n_pairs": 120, "n_test_pairs": 8}}, "test_prompts": 8},
        "annotator": ONE_EPOCH,
        "ws_sft": ONE_EPOCH,
        "ws_policy": ONE_EPOCH,
        "pretrain": {"texts": 32},
        "sft": ONE_EPOCH,
        "policy": {"model": {"lora": {"r": 2, "alpha": 4}, "reference": "adapter_disabled"}, **ONE_EPOCH},
        "online": {"data": {"batch_size": 16}},
        "eval": {"max_new_tokens": 4},
    }


def audit_config(run_dir) -> ExperimentConfig:
    return experiment_config(audit_values(run_dir))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One real run on a recorded config: which fields each stage read, and the stage graph."""
    recorder = ReadRecorder(ignore=ORCHESTRATION_FIELDS)
    config = audit_config(tmp_path_factory.mktemp("audit"))
    experiment = Experiment(recorder.wrap(config))
    experiment.stages.recorder = recorder
    rows = experiment.run()
    assert len(rows) == len(METHODS)
    return config, experiment, recorder


def test_every_field_a_stage_reads_is_declared_and_every_declared_field_is_read(audited):
    _, experiment, recorder = audited
    graph = experiment.stages.graph
    assert {n.name for n in graph.values()} == {"pretrain", "annotator", "annotate", "ws_sft", "ws_policy",
                                                "ws_annotate", "sft", "generate", "po", "test_logps", "heldout"}  # fmt: skip
    problems = []
    for key, node in graph.items():
        read = recorder.by_key.get(f"{node.name}/{key}", set())
        if read - set(node.reads):
            problems.append(
                f"{node.name} {experiment.stages.methods_of(key)}: reads undeclared {sorted(read - set(node.reads))}"
            )
        if set(node.reads) - read:
            problems.append(
                f"{node.name} {experiment.stages.methods_of(key)}: declares unread {sorted(set(node.reads) - read)}"
            )
    assert problems == [], "\n".join(problems)


def test_the_audit_can_fail(audited, monkeypatch, tmp_path):
    """A stage that forgets a field it reads (its optimiser, sft.model.optim, out of SFT's declaration) is caught."""
    monkeypatch.setattr(experiment_module, "SFT_READS", tuple(r for r in experiment_module.SFT_READS
                                                              if r != "sft.model.optim"))  # fmt: skip
    recorder = ReadRecorder(ignore=ORCHESTRATION_FIELDS)
    config = experiment_config({**audit_values(tmp_path), "methods": ["human"], "pretrain": None})
    experiment = Experiment(recorder.wrap(config))
    experiment.stages.recorder = recorder
    experiment.run()
    sft = next(n for n in experiment.stages.graph.values() if n.name == "sft")
    assert "sft.model.optim" in recorder.by_key[f"sft/{sft.key}"] - set(sft.reads)


# -- every leaf changed in turn ---------------------------------------------------------------------------------
TINY_CAUSAL_LM = {
    "name_or_path": "synthetic",
    "from_scratch": True,
    "seed": 7,
    "config": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,
    },
}
ALTERNATIVES = {
    "precision": "fp32",
    "annotate.confidence": "sigmoid",
    "eval.stop_strings": ["\n"],
    "logger": "none",
    "eval.backend": "vllm",  # planned only, so vllm need not be installed
    "data.truncation": "keep_end",
    "eval.max_prompt_length": 16,
    "annotator.model.pooling": "last",
    "ws_sft.model.backbone": TINY_CAUSAL_LM,
    "ws_sft.model.lora": LoraSpec(r=4),
    "sft.model.lora": LoraSpec(r=4),
    "ws_policy.model.lora": LoraSpec(r=2),
}
# By the field's name, wherever it is (every stage's model block has some of them).
ALTERNATIVES_BY_NAME = {
    "reference": "separate",
    "logps_impl": "hidden",
    "reduction": "normalized",
    "optimizer": "adamw",
    "scheduler": "linear",
    "reference_batch_size": 8,
}
# Values a plan cannot take another of without changing which stages exist, or that must stay what they are.
FIXED = {
    "seeds",
    "methods",
    "data.dataset.name",
    "annotator.model.backbone.name_or_path",
    "sft.model.backbone.name_or_path",
    "annotator.model.backbone.from_scratch",
    "sft.model.backbone.from_scratch",
    "annotator.model.backbone.config.model_type",
    "sft.model.backbone.config.model_type",
    "eval.judge.kind",
}


def _changed(value: Any, path: str) -> list[tuple[str, Any]]:
    """``(path, new value)`` for each scalar inside ``value`` changed to another valid value."""
    if path in FIXED:
        return []
    if path in ALTERNATIVES:
        return [(path, ALTERNATIVES[path])]
    name = path.rsplit(".", 1)[-1]
    if name in ALTERNATIVES_BY_NAME and ALTERNATIVES_BY_NAME[name] != value:
        return [(path, ALTERNATIVES_BY_NAME[name])]
    if name == "optimizer":  # already adamw
        return [(path, "adam")]
    if dataclasses.is_dataclass(value):
        return [(p, dataclasses.replace(value, **{f.name: v}))
                for f in dataclasses.fields(value) for p, v in _changed(getattr(value, f.name), f"{path}.{f.name}")]  # fmt: skip
    if isinstance(value, dict):
        out = [(p, {**value, k: v}) for k, item in value.items() for p, v in _changed(item, f"{path}.{k}")]
        extra = {
            "trainer": ("gradient_clip_val", 1.0),
            "eval.judge": ("batch_size", 8),
            "data.dataset.args": ("seed", 3),
        }
        if path in extra:
            out.append((f"{path}.{extra[path][0]}", {**value, extra[path][0]: extra[path][1]}))
        return out
    if isinstance(value, bool):
        return [(path, not value)]
    if isinstance(value, int):
        return [(path, value + 1)]
    if isinstance(value, float):
        return [(path, value * 1.5 if value > 1 else round(value - 0.05 if value >= 0.5 else value + 0.05, 6))]
    if isinstance(value, str):
        return [(path, value + "-changed")]
    return []


def _is_model_block(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and type(value).__name__.endswith("Model")


def _leaves(config: ExperimentConfig):
    """``(leaf path, changed sub-path, new config)`` for every leaf of the experiment config, at the depth stages
    read them: a top-level field, a section's field, a model block's field (``sft.model.optim``)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not dataclasses.is_dataclass(value):
            for sub, new in _changed(value, f.name):
                yield f.name, sub, dataclasses.replace(config, **{f.name: new})
            continue
        for g in dataclasses.fields(value):  # a section: data, annotator, sft, policy, eval, ...
            inner = getattr(value, g.name)
            if _is_model_block(inner):
                for h in dataclasses.fields(inner):
                    leaf = f"{f.name}.{g.name}.{h.name}"
                    for sub, new in _changed(getattr(inner, h.name), leaf):
                        block = dataclasses.replace(inner, **{h.name: new})
                        yield leaf, sub, dataclasses.replace(config, **{f.name: dataclasses.replace(value, **{
                            g.name: block})})  # fmt: skip
                continue
            leaf = f"{f.name}.{g.name}"
            for sub, new in _changed(inner, leaf):
                yield leaf, sub, dataclasses.replace(config, **{f.name: dataclasses.replace(value, **{g.name: new})})


def _every_leaf(config: ExperimentConfig) -> set[str]:
    out = set()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not dataclasses.is_dataclass(value):
            out.add(f.name)
            continue
        for g in dataclasses.fields(value):
            inner = getattr(value, g.name)
            out |= ({f"{f.name}.{g.name}.{h.name}" for h in dataclasses.fields(inner)} if _is_model_block(inner)
                    else {f"{f.name}.{g.name}"})  # fmt: skip
    return out


def _downstream(graph, keys: set[str]) -> set[str]:
    out, grew = set(keys), True
    while grew:
        grew = False
        for key, node in graph.items():
            if key not in out and set(node.upstream) & out:
                out.add(key)
                grew = True
    return out


def test_changing_any_leaf_gives_new_keys_to_exactly_the_stages_that_read_it(audited):
    config, experiment, recorder = audited
    graph = experiment.stages.graph
    order = list(graph)
    plan = Experiment(copy.deepcopy(config)).plan()
    assert [p["key"] for p in plan] == order  # planning gives the keys the run used
    walked, problems = set(), []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cwpo.evaluation.generate.vllm_available", lambda: True)  # eval.backend vllm, planned only
        for leaf, sub, changed in _leaves(config):
            walked.add(leaf)
            readers = {k for k, n in graph.items() if leaf in recorder.by_key.get(f"{n.name}/{k}", set())}
            expected = {order.index(k) for k in _downstream(graph, readers)}
            new = [p["key"] for p in Experiment(changed).plan()]
            assert len(new) == len(order), sub
            got = {i for i, (a, b) in enumerate(zip(order, new, strict=True)) if a != b}
            if got != expected:
                problems.append(f"{sub}: new keys for {sorted(graph[order[i]].name for i in got)}, expected "
                                f"{sorted(graph[order[i]].name for i in expected)}")  # fmt: skip
    assert problems == []
    assert _every_leaf(config) - walked == {"seeds", "methods"}  # which stages run: they are in no key but in the plan


def test_index_maps_stage_method_and_seed_to_folders(audited):
    config, experiment, _ = audited
    index = json.loads((experiment.run_dir / "index.json").read_text())
    entries = index["stages"]
    assert all(e["done"] for e in entries)
    for e in entries:
        assert (experiment.run_dir / e["folder"] / "DONE.json").exists()
    po = {e["method"]: e["folder"] for e in entries if e["stage"] == "po"}
    assert sorted(po) == sorted(METHODS) and len(set(po.values())) == len(METHODS)
    sft_methods = {e["method"] for e in entries if e["stage"] == "sft" and e["folder"] == (
        next(e2["folder"] for e2 in entries if e2["stage"] == "sft" and e2["method"] == "cw-dpo"))}  # fmt: skip
    assert sft_methods == {"dpo", "cw-dpo", "cw-ipo@sigmoid", "online-cw-dpo"}  # the weak-label SFT they share
    assert {e["seed"] for e in entries if e["stage"] != "pretrain"} == {0}
    heldout = [e["method"] for e in entries if e["stage"] == "heldout"]  # one per method, not its SFT's methods
    assert sorted(heldout) == sorted(m for m in METHODS if not m.startswith("online"))


def test_code_fingerprint_names_the_versions_and_the_source():
    fingerprint = code_fingerprint()
    assert set(fingerprint) == {"cwpo", "source", "torch", "transformers", "peft", "lightning"}
    assert len(fingerprint["source"]) == 16


# -- files ------------------------------------------------------------------------------------------------------
def test_a_local_data_file_edited_in_place_recomputes_its_stages(tmp_path):
    """Chosen and rejected swapped in every row of the data file, same path, same size: every stage is computed
    again (a path-keyed stage would answer from the cache with the old table)."""
    from cwpo.data import load_split
    from cwpo.data.files import iter_rows

    data = tmp_path / "pairs.jsonl"
    rows = [{k: r[k] for k in ("id", "prompt", "chosen", "rejected", "gold_reward_chosen", "gold_reward_rejected")}
            for r in load_split({"name": "synthetic", "args": {"n_pairs": 120, "n_test_pairs": 8}}, "train")]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    values = audit_values(tmp_path / "run")
    config = experiment_config({**values, "methods": ["human"], "pretrain": None, "data": {
        **values["data"], "dataset": {"name": "local", "path": str(data), "test_fraction": 0.1}}})  # fmt: skip
    first = Experiment(config)
    first.run()
    names = sorted(label.split("/")[0] for label in first.stages.computed)
    assert names == ["generate", "generate", "heldout", "po", "sft", "test_logps", "test_logps"]
    again = Experiment(config)
    again.run()
    assert again.stages.computed == [] and sorted(again.stages.reused) == sorted(first.stages.computed)

    size = data.stat().st_size
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"], "gold_reward_chosen": r["gold_reward_rejected"],
                "gold_reward_rejected": r["gold_reward_chosen"]} for _, r in iter_rows(data)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in swapped))
    assert data.stat().st_size == size
    edited = Experiment(config)
    edited.run()
    assert edited.stages.reused == [] and sorted(label.split("/")[0] for label in edited.stages.computed) == names
    hashes = json.loads((tmp_path / "run" / "file_hashes.json").read_text())
    assert sum(str(data.resolve()) in token for token in hashes) == 2  # the file before and after the edit
