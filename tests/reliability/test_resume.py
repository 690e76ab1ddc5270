"""Resuming: a killed and resumed run ends where an uninterrupted run ends, and the pipeline resumes by stage.

Fit runs (annotator, SFT, policy): ``python -m cwpo.fit`` in a subprocess, checkpointing every N steps with the
shipped checkpoint callback (``--checkpoint.every_n_steps N``), ``SIGKILL``-ed by its own test callback at the start
of step k+1 (``CWPO_TEST_KILL_AT_STEP``), then resumed with ``--ckpt_path last``. The resumed run and an
uninterrupted run of the same config are run in this process, single-threaded like the subprocess, and must agree
**bit for bit** on CPU: every step's batch rows and loss after the resume, the final weights (all of them, so the
LoRA adapters and the frozen base), the optimiser moments, the scheduler and the loop counters. Exact equality is
the right bar: the same ops on the same inputs in the same order give the same floats on one machine; any drift
would mean state was lost (data order, random state, optimiser or schedule).

The three kill points cover the three places a run can stop: mid-epoch 0 (annotator: checkpoint at step 6 of 10,
the resumed run then crosses into epoch 1 and must reshuffle), exactly at an epoch end before that epoch's
validation (SFT: step 10 of 10), and mid-epoch 1 (policy: step 12). SFT and policy train LoRA with dropout on, so
the resume must also restore the random state that dropout draws from.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.reliability.conftest import (
    assert_same_tensors,
    fit_args,
    fit_in_process,
    last_checkpoint,
    load_checkpoint,
    read_steps,
    spawn_fit,
    trainable_state,
)

# model -> (checkpoint every N steps, killed at the start of step k + 1). Each epoch is 10 steps, 2 epochs.
KILLS = {"annotator": (3, 7), "sft": (5, 11), "policy": (3, 14)}
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Start every killed run at once (they run while the in-process runs compute): ``model -> (root, process)``."""
    runs = {}
    for model, (every, kill_at) in KILLS.items():
        root = tmp_path_factory.mktemp(f"killed-{model}")
        args = fit_args(model, root, every_n_train_steps=every)
        runs[model] = (root, spawn_fit(model, args, root / "subprocess.log", CWPO_TEST_KILL_AT_STEP=str(kill_at)))
    yield runs
    for _, process in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait(process, root: Path) -> int:
    try:
        return process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    except Exception:
        process.kill()
        raise AssertionError(f"killed run did not end:\n{(root / 'subprocess.log').read_text()[-3000:]}") from None


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(KILLS))
def test_killed_and_resumed_fit_ends_with_the_uninterrupted_weights(model, killed_runs, tmp_path):
    every, kill_at = KILLS[model]
    resume_step = kill_at // every * every

    full_root = tmp_path / "uninterrupted"
    full = fit_in_process(model, fit_args(model, full_root, every_n_train_steps=every))

    killed_root, process = killed_runs[model]
    returncode = _wait(process, killed_root)
    log = (killed_root / "subprocess.log").read_text()
    assert returncode == -signal.SIGKILL, log[-3000:]
    killed_steps = read_steps(killed_root / "steps.jsonl")
    # It ran past its last checkpoint: the steps after it are lost and must be redone identically.
    assert [r["step"] for r in killed_steps] == list(range(1, kill_at + 1))
    assert load_checkpoint(last_checkpoint(killed_root))["global_step"] == resume_step

    resumed = fit_in_process(
        model, fit_args(model, killed_root, every_n_train_steps=every, extra=["--ckpt_path", "last"])
    )

    full_steps = read_steps(full_root / "steps.jsonl")
    resumed_steps = read_steps(killed_root / "steps.jsonl")[kill_at:]
    assert [r["step"] for r in resumed_steps] == list(range(resume_step + 1, len(full_steps) + 1))
    after = full_steps[resume_step:]
    # The data order: the rest of the interrupted epoch, then the next epochs' shuffles.
    assert [(r["epoch"], r["batch_idx"], r["rows"]) for r in resumed_steps] == [
        (r["epoch"], r["batch_idx"], r["rows"]) for r in after
    ]
    assert [r["loss"] for r in resumed_steps] == [r["loss"] for r in after]
    # Before the kill the two runs were the same run.
    assert killed_steps == [dict(r, pid=killed_steps[0]["pid"]) for r in full_steps[:kill_at]]

    assert_same_tensors(trainable_state(resumed.model), trainable_state(full.model))
    assert_same_tensors(resumed.model.state_dict(), full.model.state_dict())
    assert resumed.trainer.global_step == full.trainer.global_step == len(full_steps)

    # Both runs' final checkpoints: the same optimiser moments, schedule and loop state.
    full_ckpt, resumed_ckpt = load_checkpoint(last_checkpoint(full_root)), load_checkpoint(last_checkpoint(killed_root))
    for full_opt, resumed_opt in zip(full_ckpt["optimizer_states"], resumed_ckpt["optimizer_states"], strict=True):
        assert full_opt["param_groups"] == resumed_opt["param_groups"]
        for index, state in full_opt["state"].items():
            assert_same_tensors(resumed_opt["state"][index], state)
    assert full_ckpt["lr_schedulers"] == resumed_ckpt["lr_schedulers"]
    # (Not the loops' progress counters: after a resume from the last batch of an epoch, Lightning 2.6 leaves the
    # next epoch's ``ready``/``started`` counts one short; the epoch, step, weights and data order are unaffected.)
    assert (full_ckpt["epoch"], full_ckpt["global_step"]) == (resumed_ckpt["epoch"], resumed_ckpt["global_step"])


# --------------------------------------------------------------------------------------------------------------
# The training loader's position (fast, no Lightning)
# --------------------------------------------------------------------------------------------------------------


def _loader(n: int = 23, batch_size: int = 4, *, group_by_length: bool = True):
    from cwpo.data.sampler import LengthGroupedSampler, ResumableDataLoader

    lengths = [(i * 7) % 11 + 1 for i in range(n)]
    sampler = LengthGroupedSampler(lengths, batch_size, seed=5, group_multiplier=2, group_by_length=group_by_length)
    return ResumableDataLoader(list(range(n)), batch_size=batch_size, sampler=sampler,
                               collate_fn=lambda rows: rows)  # fmt: skip


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize("consumed", [0, 1, 3, 6])
def test_loader_resumes_mid_epoch_with_the_remaining_batches(consumed, group_by_length):
    """``state_dict`` after ``consumed`` batches of epoch 2, loaded into a new loader, gives exactly the rest of that
    epoch's batches (the last one partial), then epoch 3 as an uninterrupted loader gives it."""
    reference = _loader(group_by_length=group_by_length)
    reference.sampler.set_epoch(2)
    epoch_2 = list(reference)
    reference.sampler.set_epoch(3)
    epoch_3 = list(reference)
    assert len(epoch_2) == 6 and len(epoch_2[-1]) == 3 and epoch_2 != epoch_3

    interrupted = _loader(group_by_length=group_by_length)
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    seen = [next(iterator) for _ in range(consumed)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches": consumed} and seen == epoch_2[:consumed]

    resumed = _loader(group_by_length=group_by_length)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # plain data, as a checkpoint holds it
    resumed.sampler.set_epoch(2)  # Lightning sets the epoch after loading the state, before the first batch
    assert list(resumed) == epoch_2[consumed:]
    assert resumed.state_dict() == {"epoch": 2, "batches": 6}
    resumed.sampler.set_epoch(3)
    assert list(resumed) == epoch_3


def test_saved_position_of_a_finished_epoch_is_ignored():
    """A checkpoint taken at the last batch of epoch 2 resumes into epoch 3 from its first batch."""
    reference = _loader()
    reference.sampler.set_epoch(3)
    epoch_3 = list(reference)
    resumed = _loader()
    resumed.load_state_dict({"epoch": 2, "batches": 6})
    resumed.sampler.set_epoch(3)
    assert list(resumed) == epoch_3


# --------------------------------------------------------------------------------------------------------------
# The pipeline resumes at the stage it stopped in
# --------------------------------------------------------------------------------------------------------------


def _tiny_experiment(run_dir: Path, seed: int):
    from cwpo.pipeline.config import experiment_config

    backbone = {"name_or_path": "synthetic", "from_scratch": True, "seed": 2,
                "config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64}}  # fmt: skip
    return experiment_config({
        "name": "resume test",
        "run_dir": str(run_dir),
        "seeds": [seed],
        "methods": ["human"],
        "data": {"dataset": {"name": "synthetic", "args": {"n_pairs": 40, "n_test_pairs": 4}}, "max_length": 48,
                 "test_prompts": 4},
        # LoRA PO and no pretraining stage (not the embedded default): the seed checks below follow a LoRA adapter
        "pretrain": None,
        "sft": {"model": {"backbone": backbone, "optim": {"warmup_steps": 0}}, "data": {"batch_size": 8},
                "trainer": {"max_epochs": 1}},
        "policy": {"model": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "optim": {"warmup_steps": 0}},
                   "data": {"batch_size": 8}, "trainer": {"max_epochs": 1}},
        "eval": {"max_new_tokens": 4, "batch_size": 4},
    })  # fmt: skip


@pytest.fixture
def seed_spy(monkeypatch):
    """Record every seed the pipeline hands on: data splits and order, global seeding, model init, generation."""
    import lightning

    import cwpo.evaluation.generate as generate_module
    import cwpo.models as models
    import cwpo.modules.policy as policy_module
    import cwpo.modules.sft as sft_module
    from cwpo.data.datamodules import PreferenceDataModule

    seen: dict[str, list] = {"split_seed": [], "data_seed": [], "seed_everything": [], "init_seed": [], "generate": [],
                             "lora_seed": []}  # fmt: skip
    setup = PreferenceDataModule.setup

    def datamodule_setup(self, *args, **kwargs):
        seen["split_seed"].append(self.split_seed)
        seen["data_seed"].append(self.seed)
        return setup(self, *args, **kwargs)

    seed_everything = lightning.seed_everything
    build = models._build
    generate = generate_module.generate

    monkeypatch.setattr(PreferenceDataModule, "setup", datamodule_setup)
    monkeypatch.setattr(lightning, "seed_everything",
                        lambda seed=None, *a, **k: (seen["seed_everything"].append(seed), seed_everything(seed, *a, **k))[1])  # fmt: skip

    def recording_build(cls, spec, *args, **kwargs):
        if spec.from_scratch:  # loaded weights (a saved SFT model) need no seed
            seen["init_seed"].append(spec.seed)
        return build(cls, spec, *args, **kwargs)

    monkeypatch.setattr(models, "_build", recording_build)

    def recording_build_causal_lm(backbone, **kwargs):
        if kwargs.get("lora") is not None and kwargs.get("trainable", True):  # LoRA A is drawn from spec.seed + 1
            seen["lora_seed"].append(models.as_model_spec(backbone).seed)
        return sft_module.build_causal_lm(backbone, **kwargs)

    monkeypatch.setattr(policy_module, "build_causal_lm", recording_build_causal_lm)
    monkeypatch.setattr(generate_module, "generate",
                        lambda *a, **k: (seen["generate"].append(a[3].seed), generate(*a, **k))[1])  # fmt: skip
    return seen


@pytest.mark.slow
def test_pipeline_rerun_after_a_failure_reuses_the_finished_stages(tmp_path, monkeypatch, seed_spy):
    """A run that dies in preference optimisation (after SFT and its generations finished) is rerun: SFT and its
    generations are reused untouched, the half-written PO folder is removed and PO is computed again. The seed of
    the experiment (3 here, so no default 0 can pass for it) reaches every split, loader order, ``seed_everything``,
    model initialisation and generation."""
    from cwpo.pipeline.experiment import Experiment

    seed = 3
    config = _tiny_experiment(tmp_path / "run", seed)
    fit_policy = Experiment._fit_policy

    def dies_mid_stage(self, name, folder, *args, **kwargs):
        (Path(folder) / "adapter").mkdir()
        (Path(folder) / "adapter" / "adapter_model.safetensors").write_bytes(b"half written")
        raise RuntimeError("killed during preference optimisation")

    monkeypatch.setattr(Experiment, "_fit_policy", dies_mid_stage)
    first = Experiment(config)
    with pytest.raises(RuntimeError, match="killed during"):
        first.run()
    assert [label.split("/")[0] for label in first.stages.computed] == ["sft", "generate"]
    sft_dir = next((tmp_path / "run" / "sft").iterdir())
    sft_files = {p: p.stat().st_mtime_ns for p in sft_dir.rglob("*") if p.is_file()}
    po_dirs = list((tmp_path / "run" / "po").iterdir())
    assert len(po_dirs) == 1 and not (po_dirs[0] / "DONE.json").exists()

    monkeypatch.setattr(Experiment, "_fit_policy", fit_policy)
    time.sleep(0.01)  # a rewritten file would get a later mtime
    second = Experiment(config)
    rows = second.run()
    assert second.stages.reused == first.stages.computed  # SFT and the SFT model's generations
    # held-out accuracy reads the SFT model's and the policy's test log-probs (stage test_logps, one per model)
    assert [label.split("/")[0] for label in second.stages.computed] == [
        "po", "generate", "test_logps", "test_logps", "heldout"
    ]  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in sft_dir.rglob("*") if p.is_file()} == sft_files
    assert (po_dirs[0] / "DONE.json").exists()
    assert (po_dirs[0] / "adapter" / "adapter_model.safetensors").read_bytes() != b"half written"
    assert len(rows) == 1 and rows[0]["seed"] == seed

    # Determinism: the one experiment seed reached every seeded piece (issue #8, item 3).
    assert set(seed_spy["split_seed"]) == {seed} and set(seed_spy["data_seed"]) == {seed}
    assert set(seed_spy["seed_everything"]) == {seed}
    assert set(seed_spy["init_seed"]) == {2 + 1000 * seed}
    assert set(seed_spy["lora_seed"]) == {seed} and len(seed_spy["lora_seed"]) == 1  # the PO adapter on the SFT model
    assert set(seed_spy["generate"]) == {seed} and len(seed_spy["generate"]) == 2


# --------------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------------

# Calls that write a file or a folder: each must run inside ``with atomic_path(...)`` (cwpo.io), or be listed below.
WRITER_METHODS = {"save_to_disk", "to_parquet", "save_pretrained", "savefig", "write_text", "write_bytes", "to_json",
                  "to_csv"}  # fmt: skip
WRITER_FUNCTIONS = {"save_file", "save"}  # safetensors.torch.save_file, torch.save / np.save
# function -> why its writes are safe without its own atomic_path
ATOMIC_BY_DESIGN = {
    ("cwpo/io.py", "atomic_path"): "the helper itself: reopens its temporary file to fsync it before the rename",
    ("cwpo/modules/export.py", "_save_tokenizer"): "writes into the temporary folder its callers' atomic_path made",
    ("cwpo/modules/export.py", "_write_base"): "writes into the temporary folder its caller's atomic_path made",
    ("cwpo/annotation/shards.py", "PartWriter"): "append-only part files: one write + fsync per batch, a torn "
    "last line is cut on resume (its docstring), merged output goes through save_pairs",
    ("cwpo/annotation/shards.py", "read_part"): "cuts a torn last line off a part file (truncate + fsync)",
}


def _writes_outside_atomic_path() -> list[str]:
    import ast

    root = Path(__file__).resolve().parents[2]
    problems = []
    for path in sorted((root / "cwpo").rglob("*.py")):
        rel = str(path.relative_to(root))
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

        def enclosing(node, parents=parents):
            while node in parents:
                node = parents[node]
                yield node

        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            is_writer = (isinstance(func, ast.Attribute) and name in WRITER_METHODS) or name in WRITER_FUNCTIONS
            if name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                is_writer = any(c in str(node.args[1].value) for c in "wax+")
            if not is_writer:
                continue
            outer = list(enclosing(node))
            in_atomic = any(
                isinstance(n, ast.With)
                and any(
                    isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", "") == "atomic_path"
                    for i in n.items
                )  # fmt: skip
                for n in outer
            )
            scopes = {n.name for n in outer if isinstance(n, ast.FunctionDef | ast.ClassDef)}
            if not in_atomic and not any((rel, scope) in ATOMIC_BY_DESIGN for scope in scopes):
                problems.append(f"{rel}:{node.lineno} {name}(...)")
    return problems


def test_every_dataset_cache_and_model_write_goes_through_atomic_path():
    """Datasets (``save_pairs``), tokenisation and reference caches, annotate outputs, exports and reports are
    written under a temporary name and renamed into place, so a kill leaves the old file or none."""
    assert _writes_outside_atomic_path() == []


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from cwpo.io import atomic_path

    target = tmp_path / "cache.safetensors"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"complete" and sorted(tmp_path.iterdir()) == [target]


def test_lightning_checkpoints_are_saved_through_atomic_save(tmp_path):
    """Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint to memory, then writes it in one fsspec
    transaction (temporary file, then a move onto the name), so a failure while serialising leaves the previous
    checkpoint untouched. (The transaction's temporary file lives in the system temp dir: the final move is an
    atomic rename only when that is on the checkpoint's filesystem; see the report of issue #8.)"""
    import inspect

    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    assert "_atomic_save(" in inspect.getsource(TorchCheckpointIO.save_checkpoint)
    target = tmp_path / "last.ckpt"
    TorchCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        TorchCheckpointIO().save_checkpoint({"step": torch.tensor(2), "bad": lambda: None}, target)
    assert target.read_bytes() == before and sorted(tmp_path.iterdir()) == [target]
