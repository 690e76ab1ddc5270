"""Stage 2 end to end on tiny models: ``annotate_dataset``, its resume after a crash, PairRM, checkpoints, the CLI.

The ``fit`` -> ``annotate`` chain through both command lines is tested in ``test_fit_then_annotate_cli``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from cwpo.annotation import annotate_dataset, export_annotator, load_annotator
from cwpo.errors import ConfigError, CwpoError
from cwpo.models import ModelSpec
from cwpo.modules.annotator import AnnotatorModule, PairRMModule

REPO = Path(__file__).resolve().parents[1]
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
}
LABEL_COLUMNS = {"weak_score_chosen", "weak_score_rejected", "confidence", "human_label", "agrees_with_human"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _module(cls=AnnotatorModule, seed: int = 0, **kwargs):
    module = cls(ModelSpec("synthetic", from_scratch=True, config=dict(TINY_LLAMA), seed=seed), **kwargs)
    module.configure_model()
    return module.eval()


class CountingScores:
    """Wraps a module's scoring to count how often each pair is scored, and to crash after ``crash_after`` batches."""

    def __init__(self, module, crash_after: int | None = None):
        self.module, self.crash_after = module, crash_after
        self.original = module._pair_scores
        self.counts: Counter[int] = Counter()
        self.batches = 0

    def __call__(self, batch):
        if self.crash_after is not None and self.batches == self.crash_after:
            raise RuntimeError("simulated crash")
        self.batches += 1
        self.counts.update(batch["index"].tolist())
        return self.original(batch)

    def __enter__(self):
        self.module._pair_scores = self
        return self

    def __exit__(self, *exc):
        del self.module._pair_scores  # back to the class method
        return False


@pytest.fixture(scope="module")
def pairs():
    """60 pairs of the synthetic task's test split, with human labels and gold rewards."""
    from cwpo.data import load_synthetic

    return load_synthetic(split="test", n_test_pairs=60)


def _annotate(module, output, pairs, **kwargs):
    options = {"batch_size": 8, "max_length": 48, "progress": False, "trainer": {"accelerator": "cpu"}}
    return annotate_dataset(module, pairs, output, **{**options, **kwargs})


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_an_interrupted_annotation_resumes_to_the_same_file_without_rescoring(tmp_path, pairs):
    module = _module()
    with CountingScores(module) as whole:
        full = _annotate(module, tmp_path / "full.jsonl", pairs)
    assert full.n_pairs == 60 and full.n_scored_this_run == 60
    assert set(whole.counts.values()) == {1} and len(whole.counts) == 60

    output = tmp_path / "resumed.jsonl"
    with CountingScores(module, crash_after=3) as first, pytest.raises(RuntimeError, match="simulated crash"):
        _annotate(module, output, pairs)
    assert not output.exists()  # nothing final before the end
    parts = tmp_path / "resumed.jsonl.parts"
    assert sum(len(p.read_text().splitlines()) for p in parts.glob("part-rank*.jsonl")) == 24  # 3 batches of 8
    with CountingScores(module) as second:
        resumed = _annotate(module, output, pairs)
    assert resumed.n_scored_this_run == 36
    scored = first.counts + second.counts
    assert len(scored) == 60 and set(scored.values()) == {1}, "every pair scored exactly once over both runs"
    assert output.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert not parts.exists()  # merged and cleaned up


def test_a_work_folder_of_another_job_is_refused(tmp_path, pairs):
    module = _module()
    with pytest.raises(RuntimeError), CountingScores(module, crash_after=1):
        _annotate(module, tmp_path / "out.jsonl", pairs)
    with pytest.raises(CwpoError, match="different annotation job"):
        _annotate(module, tmp_path / "out.jsonl", pairs, batch_size=4)
    # resume=False discards the old parts and starts over.
    assert _annotate(module, tmp_path / "out.jsonl", pairs, batch_size=4, resume=False).n_pairs == 60


def _check_labelled(rows):
    for row in rows:
        margin = row["weak_score_chosen"] - row["weak_score_rejected"]
        assert margin >= 0
        assert row["confidence"] == pytest.approx(math.tanh(margin / 2), abs=1e-6)  # 2σ(Δ) - 1
        assert row["agrees_with_human"] == (row["human_label"] == 1)


def test_bt_and_pairrm_annotators_write_the_same_columns(tmp_path, pairs):
    bt = _annotate(_module(), tmp_path / "bt.jsonl", pairs)
    pairrm = _annotate(
        _module(PairRMModule, max_prompt_tokens=16, max_response_tokens=16), tmp_path / "pairrm.jsonl", pairs
    )
    bt_rows, pairrm_rows = _rows(bt.path), _rows(pairrm.path)
    assert len(bt_rows) == len(pairrm_rows) == 60
    assert set(bt_rows[0]) == set(pairrm_rows[0]) and LABEL_COLUMNS <= set(bt_rows[0])
    _check_labelled(bt_rows)
    _check_labelled(pairrm_rows)
    # The same pairs in the same order, each possibly reordered by its annotator.
    assert [r["id"] for r in bt_rows] == [r["id"] for r in pairrm_rows]
    assert [{r["chosen"], r["rejected"]} for r in bt_rows] == [{r["chosen"], r["rejected"]} for r in pairrm_rows]
    report = json.loads((tmp_path / "bt.annotator_report.json").read_text())
    assert report["n_labelled"] == 60 and report["accuracy"] == pytest.approx(bt.agreement)
    assert (tmp_path / "bt.jsonl.report.json").exists()  # the tokeniser's drop counts


def test_a_pair_is_swapped_with_its_paired_columns(tmp_path, pairs):
    result = _annotate(_module(), tmp_path / "out.jsonl", pairs)
    originals = {r["id"]: r for r in pairs}
    rows = _rows(result.path)
    swapped = [r for r in rows if r["chosen"] != originals[r["id"]]["chosen"]]
    assert swapped and len(swapped) < len(rows)
    for row in swapped:
        original = originals[row["id"]]
        assert (row["chosen"], row["rejected"]) == (original["rejected"], original["chosen"])
        assert row["gold_reward_chosen"] == original["gold_reward_rejected"]
        assert row["human_label"] == 0


def _scores(module, tokenizer_batch):
    with torch.no_grad():
        return torch.stack(module.score(tokenizer_batch))


def test_checkpoint_and_exported_folder_load_the_same_annotator(tmp_path):
    from cwpo.data import PairCollator, load_synthetic, tokenize_pairs

    module = _module(PairRMModule, seed=3, max_prompt_tokens=12)
    checkpoint = tmp_path / "annotator.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, checkpoint)
    folder = export_annotator(module, tmp_path / "exported")
    rows = tokenize_pairs(load_synthetic(4, "test"), module.tokenizer)
    batch = PairCollator(pad_token_id=module.tokenizer.pad_token_id)([dict(r, index=i) for i, r in enumerate(rows)])
    expected = _scores(module, batch)
    for source in (checkpoint, folder):
        loaded = load_annotator(source)
        assert type(loaded) is PairRMModule and loaded.max_prompt_tokens == 12
        torch.testing.assert_close(_scores(loaded, batch), expected)
    with pytest.raises(CwpoError, match="no annotator"):
        load_annotator(tmp_path / "missing.ckpt")


def test_fit_then_annotate_cli(tmp_path, pairs, monkeypatch):
    """``python -m cwpo.fit --model annotator --config configs/annotator/synthetic.yaml`` trains (2 steps here)
    and ``cwpo annotate`` labels with its ``last.ckpt``."""
    from cwpo import annotate, fit

    monkeypatch.chdir(tmp_path)
    cli = fit.build_cli(
        "annotator",
        [
            "--config",
            str(REPO / "configs/annotator/synthetic.yaml"),
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "2",
            "--data.limit",
            "64",
        ],
    )
    assert cli.trainer.global_step == 2
    assert {"train/loss", "val/loss", "val/accuracy"} <= set(cli.trainer.callback_metrics)
    checkpoint = next((tmp_path / "runs" / "annotator").rglob("last.ckpt"))
    from cwpo.data import save_pairs

    data_file = save_pairs(pairs, tmp_path / "d_u.jsonl")
    output = tmp_path / "labelled.jsonl"
    code = annotate.main(
        [
            "--annotator",
            str(checkpoint),
            "--data",
            str(data_file),
            "--output",
            str(output),
            "--max_length",
            "48",
            "--accelerator",
            "cpu",
            "--progress",
            "false",
        ]
    )
    assert code == 0
    rows = _rows(output)
    assert len(rows) == 60 and LABEL_COLUMNS <= set(rows[0])
    assert (tmp_path / "labelled.annotator_report.md").exists()


def test_a_work_folder_with_parts_but_no_manifest_is_refused(tmp_path, pairs):
    """Parts with no manifest could be another dataset's scores: refused, not reused."""
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / "part-rank0.jsonl").write_text('{"index": 0, "score_1": 1.0, "score_2": 0.0}\n')
    with pytest.raises(CwpoError, match="no manifest.json"):
        _annotate(_module(), tmp_path / "out.jsonl", pairs)


def test_the_dropped_count_is_the_one_the_report_beside_the_output_holds(tmp_path, pairs):
    """A loader drop (an empty response, a duplicate) and the tokeniser's drops: the result (what the console
    prints) and ``<output>.report.json`` say the same number."""
    records = list(pairs.select(range(10)))
    rows = [*records, {**records[0]}, {**records[1], "id": "empty", "chosen": " "}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _annotate(_module(), tmp_path / "out.jsonl", str(source))
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert report["dropped"] == {"duplicate": 1, "empty_response": 1}
    assert result.n_dropped == sum(report["dropped"].values()) == 2 and result.n_pairs == 10


def test_the_output_type_is_checked_before_any_pair_is_scored(tmp_path, pairs):
    module = _module()
    with CountingScores(module) as counts, pytest.raises(ConfigError, match=r"the output must end in \.jsonl"):
        _annotate(module, tmp_path / "x.json", pairs)
    assert counts.batches == 0 and not list(tmp_path.iterdir())


def test_a_second_annotate_into_the_same_output_is_refused_while_the_first_runs(tmp_path, pairs):
    """The lock holds a live process id (this one stands in for a running annotate): refused. A lock whose process
    is gone is taken over, and removed at the end."""
    import subprocess
    import sys

    output = tmp_path / "out.jsonl"
    lock = tmp_path / "out.jsonl.lock"
    lock.write_text(f"{os.getpid()}\n")
    with pytest.raises(CwpoError, match=f"is being written by another annotate \\(process {os.getpid()}\\)"):
        _annotate(_module(), output, pairs)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(gone.stdout)
    assert _annotate(_module(), output, pairs).n_pairs == 60
    assert output.exists() and not lock.exists()


def test_an_earlier_runs_agreement_report_does_not_stay_beside_a_new_output(tmp_path, pairs):
    stale = [tmp_path / f"out.annotator_report.{suffix}" for suffix in ("md", "json", "png")]
    for path in stale:
        path.write_text("from an earlier run")
    _annotate(_module(), tmp_path / "out.jsonl", pairs.remove_columns("human_label"))
    assert not any(path.exists() for path in stale)  # no human labels now: no report, and no stale one
