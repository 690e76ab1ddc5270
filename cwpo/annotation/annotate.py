"""Stage 2 of CW-PO: label ``D_U`` with a trained weak annotator and a confidence per pair.

:func:`annotate_dataset` loads an annotator (:mod:`cwpo.annotation.loading`), tokenises the pairs with the
annotator's tokenizer (:func:`cwpo.data.tokenize_pairs`, over-long pairs keep their end by default, so every
scoreable pair gets a label), scores both responses of every pair through Lightning's predict loop, and writes
the labelled pairs (:func:`cwpo.annotation.labels.label_pairs`: Eq. 6 order, Eq. 8 confidence).

Scale and resumption (:mod:`cwpo.annotation.shards`): the predict loop runs under any Lightning strategy
(``trainer={"accelerator": "gpu", "devices": 8, "strategy": "ddp", "num_nodes": 2}``); each rank appends its
finished batches to ``part-rank{r}.jsonl`` in the work folder, durably; a rerun after a crash or a kill scores
only the pairs no part file holds; rank 0 merges the parts in row order and writes the output atomically
(``.jsonl``, ``.jsonl.gz`` or ``.parquet``, with the tokeniser's drop report beside it as
``<output>.report.json``), then an agreement report (:mod:`cwpo.annotation.report`) when the pairs carry human
labels.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from cwpo.annotation.labels import label_pairs
from cwpo.annotation.loading import load_annotator
from cwpo.annotation.shards import PartWriter, assign_batches, check_manifest, merge_parts, plan_batches, read_parts
from cwpo.errors import ConfigError, CwpoError
from cwpo.losses import CONFIDENCE_SCHEMES

logger = logging.getLogger(__name__)

ROW_COLUMN = "_annotate_row"
# Trainer settings that can change a score (and so must match on resume); placement settings (devices, strategy,
# nodes) cannot.
_SCORE_AFFECTING_TRAINER_KEYS = ("precision", "accelerator")


@dataclass
class AnnotationResult:
    """What :func:`annotate_dataset` did.

    Args:
        path: the labelled dataset.
        n_pairs: pairs written.
        n_dropped: input pairs the tokeniser dropped (empty or identical responses, over budget with ``drop``).
        n_scored_this_run: pairs scored by this process in this run (fewer than ``n_pairs`` after a resume or on
            one of several ranks).
        seconds: wall time of the scoring loop of this run.
        pairs_per_second: ``n_scored_this_run / seconds``.
        agreement: share of pairs whose weak order agrees with the human label (``None`` without labels).
        report: the :func:`cwpo.annotation.report.annotator_report` dict (with ``paths``), when written.
    """

    path: Path
    n_pairs: int
    n_dropped: int
    n_scored_this_run: int
    seconds: float
    pairs_per_second: float
    agreement: float | None = None
    report: dict[str, Any] | None = field(default=None, repr=False)


class _TokenizedRows(Dataset):
    def __init__(self, tokenized, columns: Sequence[str]):
        self.rows = tokenized.select_columns([c for c in columns if c in tokenized.column_names])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[int(index)]
        row["index"] = int(index)
        return row


class _PlannedBatches:
    """A fixed list of batches as a batch sampler (Lightning's predict loop wraps it to record indices)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _AnnotationData(L.LightningDataModule):
    """Serves each rank its share of the planned batches that still hold unscored pairs."""

    def __init__(self, rows: Dataset, batches: list[list[int]], done: set[int], collator, num_workers: int):
        super().__init__()
        self.rows, self.batches, self.done = rows, batches, done
        self.collator, self.num_workers = collator, num_workers
        self.assigned: list[list[int]] = []

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.assigned = assign_batches(self.batches, self.done, rank, world)
        return DataLoader(
            self.rows,
            batch_sampler=_PlannedBatches(self.assigned),
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )


class _PartWriterCallback(BasePredictionWriter):
    """Appends each finished batch to this rank's part file (durably) and shows pairs/s on rank 0."""

    def __init__(self, work_dir: Path, datamodule: _AnnotationData, progress: bool):
        super().__init__(write_interval="batch")
        self.work_dir, self.datamodule, self.progress = work_dir, datamodule, progress
        self.writer: PartWriter | None = None
        self.bar = None
        self.scored = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        total = sum(len(b) for b in self.datamodule.assigned)
        self.writer = PartWriter(self.work_dir, trainer.global_rank, total=total)
        if self.progress and trainer.is_global_zero:
            from tqdm.auto import tqdm

            desc = "annotate" if trainer.world_size == 1 else f"annotate (rank 0 of {trainer.world_size})"
            self.bar = tqdm(total=total, unit="pair", desc=desc, dynamic_ncols=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        indices = prediction["index"].tolist()
        self.writer.write(indices, prediction["score_1"].float().tolist(), prediction["score_2"].float().tolist())
        self.scored += len(indices)
        if self.bar is not None:
            self.bar.update(len(indices))

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_predict_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()


def _load_pairs(pairs, part: str, split_ratio: float, split_seed: int):
    import datasets

    from cwpo.data import load_part

    if isinstance(pairs, datasets.Dataset):
        return pairs
    if isinstance(pairs, list):
        return datasets.Dataset.from_list(pairs)
    return load_part(pairs, part, split_ratio=split_ratio, split_seed=split_seed)


def module_fingerprint(module) -> str:
    """A hash of an annotator: its type, pooling and every weight (bytes), for the resume manifest."""
    digest = hashlib.sha256(f"{module.annotator_type}/{module.resolved_pooling}".encode())
    for name in ("max_prompt_tokens", "max_response_tokens"):
        digest.update(f"{name}={getattr(module, name, None)}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _row_lengths(tokenized) -> list[int]:
    prompts = tokenized["prompt_ids"]
    return [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(prompts, tokenized["chosen_ids"], tokenized["rejected_ids"], strict=True)
    ]


def _annotate_dataset(
    annotator,
    pairs,
    output: str | os.PathLike,
    *,
    part: str = "all",
    split_ratio: float = 0.3,
    split_seed: int = 0,
    confidence: str = "cw",
    batch_size: int = 32,
    max_length: int = 512,
    truncation: str = "keep_end",
    min_prompt_tokens: int = 64,
    chat_template_for_text: bool = False,
    work_dir: str | os.PathLike | None = None,
    resume: bool = True,
    keep_parts: bool = False,
    report: bool = True,
    report_dir: str | os.PathLike | None = None,
    trainer: dict[str, Any] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> AnnotationResult | None:
    """Label pairs with a weak annotator: order by its scores, attach confidence, write the dataset.

    Args:
        annotator: a Lightning ``.ckpt`` of ``AnnotatorModule``/``PairRMModule``, a folder from
            :func:`cwpo.annotation.export_annotator`, or a module object.
        pairs: a :class:`datasets.Dataset`, a list of records, or a dataset spec (loader name, file path, or a
            :class:`cwpo.data.DatasetSpec` dict) of which ``part`` is labelled.
        output: the labelled dataset: ``.jsonl``, ``.jsonl.gz`` or ``.parquet``; written atomically.
        part: with a spec, which part to label (``all``, ``d_u``, ``train``, ``test``, ``d_l``).
        split_ratio: with a spec and ``part`` ``d_l``/``d_u``, the labelled share of ``train``.
        split_seed: with a spec, the seed of the D_L / D_U split.
        confidence: the confidence scheme (:data:`cwpo.losses.CONFIDENCE_SCHEMES`; default ``cw``, Eq. 8).
        batch_size: pairs per scoring batch (each batch is ``2 * batch_size`` sequences).
        max_length: token budget of prompt + the longer response (for PairRM: of each pair before the triple).
        truncation: ``keep_end`` (default: over-long pairs keep their end and are labelled) or ``drop``.
        min_prompt_tokens: with ``keep_end``, the prompt keeps at least this many of its last tokens before the
            responses are cut (must leave room for them under ``max_length``).
        chat_template_for_text: send text prompts through the tokenizer's chat template.
        work_dir: where part files live (default ``<output>.parts``).
        resume: continue from the part files of an interrupted run of the same job (``False`` starts over).
        keep_parts: keep the work folder after the output is written.
        report: write the agreement report when the pairs carry human labels.
        report_dir: where the report goes (default: beside ``output``, named ``<output name>.annotator_report.*``).
        trainer: keyword arguments of :class:`lightning.Trainer` (``accelerator``, ``devices``, ``strategy``,
            ``num_nodes``, ``precision``); default one device, chosen automatically.
        num_workers: ``DataLoader`` workers per rank.
        progress: show a tqdm bar (pairs/s) on rank 0.

    Returns:
        An :class:`AnnotationResult` on rank 0; ``None`` on other ranks.

    Raises:
        ConfigError: an unknown confidence scheme or a bad annotator source.
        CwpoError: the work folder belongs to another job, or a rank did not finish.
    """
    from cwpo.data import PairCollator, TokenizeConfig, get_filter_report, save_pairs, tokenize_pairs
    from cwpo.data.tokenization import dataset_fingerprint

    if confidence not in CONFIDENCE_SCHEMES:
        raise ConfigError(f"unknown confidence scheme {confidence!r}; valid: {', '.join(CONFIDENCE_SCHEMES)}")
    output = Path(output)
    work_dir = Path(work_dir) if work_dir is not None else output.with_name(output.name + ".parts")
    trainer_kwargs = {"accelerator": "auto", "devices": 1, **(trainer or {})}

    module = load_annotator(annotator)
    records = _load_pairs(pairs, part, split_ratio, split_seed)
    indexed = records.add_column(ROW_COLUMN, list(range(len(records))))
    config = TokenizeConfig(
        max_length=max_length,
        truncation=truncation,
        min_prompt_tokens=min_prompt_tokens,
        chat_template_for_text=chat_template_for_text,
    )
    tokenized = tokenize_pairs(indexed, module.tokenizer, config)
    batches = plan_batches(_row_lengths(tokenized), batch_size)

    manifest = {
        "data": dataset_fingerprint(records),
        "n_tokenized": len(tokenized),
        "annotator": module_fingerprint(module),
        "batch_size": batch_size,
        "tokenize": asdict(config),
        "trainer": {k: str(trainer_kwargs.get(k)) for k in _SCORE_AFFECTING_TRAINER_KEYS},
    }
    if not resume and work_dir.exists() and _is_rank_zero_launch():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    check_manifest(work_dir, manifest)
    # Read what is done before the predict loop starts: every rank reads before any rank can write (ranks meet
    # at process-group setup inside predict), so all ranks agree on the remaining batches.
    done = set(read_parts(work_dir, repair=False))

    rows = _TokenizedRows(tokenized, ("prompt_ids", "chosen_ids", "rejected_ids", "human_label"))
    datamodule = _AnnotationData(
        rows, batches, done, PairCollator(pad_token_id=module.tokenizer.pad_token_id), num_workers
    )
    writer = _PartWriterCallback(work_dir, datamodule, progress)
    runner = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[writer],
        **trainer_kwargs,
    )
    started = time.monotonic()
    with warnings.catch_warnings():
        # Lightning warns that it cannot check a custom batch sampler returns every index; plan_batches does.
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        runner.predict(module, datamodule=datamodule, return_predictions=False)
    seconds = time.monotonic() - started
    if runner.interrupted:
        raise CwpoError(f"annotation interrupted; run it again to resume from {work_dir}")
    runner.strategy.barrier("cwpo-annotate-merge")
    if not runner.is_global_zero:
        return None

    scores = merge_parts(work_dir, len(tokenized))
    originals = records.select(tokenized[ROW_COLUMN])
    labelled = label_pairs(list(originals), scores, confidence=confidence)
    import datasets

    dataset = datasets.Dataset.from_list(labelled) if labelled else records.select([])
    drops = get_filter_report(tokenized)
    if drops is not None:
        drops.attach(dataset)
    save_pairs(dataset, output)
    agreement = None
    report_out = None
    folder = Path(report_dir) if report_dir is not None else output.parent
    stem = output.name.split(".")[0] + ".annotator_report" if report_dir is None else "annotator_report"
    for suffix in (".md", ".json", ".png"):  # an earlier run's report must not stand beside this output
        (folder / f"{stem}{suffix}").unlink(missing_ok=True)
    if any(r.get("human_label") is not None for r in labelled):
        agreement = sum(r["human_label"] == 1 for r in labelled if r.get("human_label") is not None) / sum(
            r.get("human_label") is not None for r in labelled
        )
        if report:
            from cwpo.annotation.report import write_report

            report_out = write_report(labelled, folder, title=f"Weak annotator ({module.annotator_type})", stem=stem)
    if not keep_parts:
        shutil.rmtree(work_dir, ignore_errors=True)
    logger.info("annotated %d pairs -> %s (agreement %s)", len(labelled), output, agreement)
    return AnnotationResult(
        path=output,
        n_pairs=len(labelled),
        # the loader's drops too, as the report beside the output counts them
        n_dropped=drops.n_dropped if drops is not None else len(records) - len(tokenized),
        n_scored_this_run=writer.scored,
        seconds=seconds,
        pairs_per_second=writer.scored / seconds if seconds > 0 else 0.0,
        agreement=agreement,
        report=report_out,
    )


@functools.wraps(_annotate_dataset)
def annotate_dataset(annotator, pairs, output: str | os.PathLike, *args, **kwargs):
    _check_output(Path(output))  # before any pair is scored
    with output_lock(output) if _is_rank_zero_launch() else contextlib.nullcontext():
        return _annotate_dataset(annotator, pairs, output, *args, **kwargs)


_OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".parquet")


def _check_output(output: Path) -> None:
    """The output's type and folder, checked before the work starts (not after every pair is scored)."""
    if not output.name.lower().endswith(_OUTPUT_SUFFIXES):
        raise ConfigError(f"cannot write {output}: the output must end in {', '.join(_OUTPUT_SUFFIXES)}")
    parent = output.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write {output}: {parent} is not writable; choose another --output")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike):
    """``<output>.lock`` while this process writes ``output``: a second annotate into the same output is refused
    (a lock left by a process that no longer runs is taken over)."""
    lock = Path(f"{output}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise CwpoError(f"{output} is being written by another annotate (process {pid}); wait for it to "
                                f"end, or delete {lock} if that process is gone") from None  # fmt: skip
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:  # pragma: no cover - another process took the stale lock between our two tries
        raise CwpoError(f"{output} is being written by another annotate ({lock})")
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_rank_zero_launch() -> bool:
    # Before the Trainer exists, only environment variables tell the rank (torchrun, SLURM, Lightning's launcher).
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
