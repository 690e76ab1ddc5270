"""Resumable, sharded storage of annotation scores: one append-only part file per rank, merged by rank 0.

Layout of the work folder (``<output>.parts/`` by default)::

    manifest.json          what is being annotated (input, annotator, batching); a resume must match it
    part-rank{r}.jsonl     one line per scored pair: {"index": i, "score_1": s1, "score_2": s2}
    progress-rank{r}.json  pairs and batches done by rank r in this run, pairs/s, last update (for humans)

Crash safety. Each finished batch is appended to its rank's part file with one ``write`` and made durable with
``fsync`` before the next batch starts; a line is the unit of commitment. On resume every part file is read back,
a torn last line (a kill in the middle of a write) is cut off, and the indices it holds are done: they are never
scored again. Nothing else is needed to resume, so the progress record is informational.

Determinism. The batches are planned once over the whole input (length-sorted, then cut into batches of
``batch_size``), independently of what is already done and of the number of ranks, and a resumed run scores the
same batches (minus finished rows): each pair is scored in the same company of padding as in an uninterrupted
run, so both produce the same scores. Planned batches go to ranks round-robin.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cwpo.errors import CwpoError, DataError
from cwpo.io import write_json

MANIFEST = "manifest.json"
PART_PREFIX = "part-rank"


def part_path(work_dir: str | os.PathLike, rank: int) -> Path:
    """The part file of ``rank``."""
    return Path(work_dir) / f"{PART_PREFIX}{rank}.jsonl"


def progress_path(work_dir: str | os.PathLike, rank: int) -> Path:
    """The progress record of ``rank``."""
    return Path(work_dir) / f"progress-rank{rank}.json"


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices cut into batches of similar length, longest first (an out-of-memory shows up at once).

    Args:
        lengths: a length per row (tokens of the longer of the two sequences).
        batch_size: rows per batch.

    Returns:
        Batches of row indices; a stable sort, so equal lengths keep their input order.
    """
    if batch_size < 1:
        raise CwpoError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def assign_batches(batches: Sequence[Sequence[int]], done: set[int], rank: int, world_size: int) -> list[list[int]]:
    """This rank's share of the batches that still hold unscored rows, with the scored rows taken out.

    Unfinished batches are dealt round-robin, so ranks get similar lengths and counts.
    """
    if not 0 <= rank < world_size:
        raise CwpoError(f"rank {rank} is outside a world of size {world_size}")
    todo = [[i for i in batch if i not in done] for batch in batches]
    todo = [batch for batch in todo if batch]
    return todo[rank::world_size]


def read_part(path: str | os.PathLike, *, repair: bool = True) -> dict[int, tuple[float, float]]:
    """The scores recorded in one part file: ``{index: (score_1, score_2)}``.

    A last line without its newline, or that does not parse, is what a kill in the middle of a write leaves: it
    is dropped and (with ``repair``) cut off the file, so that later appends start on a clean line. A malformed
    line anywhere else is corruption and raises.

    Raises:
        DataError: a malformed line before the last one, or an index recorded twice with different scores.
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    scores: dict[int, tuple[float, float]] = {}
    offset = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines):
        is_last = number == len(lines) - 1
        if is_last:
            # A complete file ends with "\n", so its last split piece is empty; anything else is a torn write.
            break
        try:
            entry = json.loads(line)
            index, score = int(entry["index"]), (float(entry["score_1"]), float(entry["score_2"]))
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"malformed part line ({err})", path=str(path), row=number) from None
        if index in scores and scores[index] != score:
            raise DataError(f"pair {index} recorded twice with different scores", path=str(path), row=number)
        scores[index] = score
        offset += len(line) + 1
    if repair and offset != len(data):
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
    return scores


def read_parts(work_dir: str | os.PathLike, *, repair: bool = True) -> dict[int, tuple[float, float]]:
    """The scores of every part file in ``work_dir`` (any number of ranks, from any earlier run)."""
    scores: dict[int, tuple[float, float]] = {}
    for path in sorted(Path(work_dir).glob(f"{PART_PREFIX}*.jsonl")):
        for index, score in read_part(path, repair=repair).items():
            if index in scores and scores[index] != score:
                raise DataError(f"pair {index} recorded in two part files with different scores", path=str(path))
            scores[index] = score
    return scores


class PartWriter:
    """Appends one rank's finished batches to its part file, durably (see the module docstring)."""

    def __init__(self, work_dir: str | os.PathLike, rank: int, *, total: int | None = None):
        self.work_dir = Path(work_dir)
        self.rank = rank
        self.total = total
        self.path = part_path(work_dir, rank)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        read_part(self.path)  # cut a torn last line before appending after it
        self._file = open(self.path, "ab")
        self.pairs = 0
        self.batches = 0
        self._started = time.monotonic()

    def write(self, indices: Sequence[int], score_1: Sequence[float], score_2: Sequence[float]) -> None:
        """Append one batch and make it durable."""
        payload = "".join(
            json.dumps({"index": int(i), "score_1": float(a), "score_2": float(b)}) + "\n"
            for i, a, b in zip(indices, score_1, score_2, strict=True)
        )
        self._file.write(payload.encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self.pairs += len(indices)
        self.batches += 1
        elapsed = max(time.monotonic() - self._started, 1e-9)
        write_json(
            progress_path(self.work_dir, self.rank),
            {
                "rank": self.rank,
                "pairs_done_this_run": self.pairs,
                "batches_done_this_run": self.batches,
                "pairs_assigned_this_run": self.total,
                "pairs_per_second": self.pairs / elapsed,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def merge_parts(work_dir: str | os.PathLike, n_rows: int) -> list[tuple[float, float]]:
    """All ranks' scores in original row order.

    Raises:
        CwpoError: a row has no score (a rank did not finish), or an index lies outside ``0..n_rows-1``.
    """
    scores = read_parts(work_dir, repair=False)
    outside = [i for i in scores if not 0 <= i < n_rows]
    if outside:
        raise CwpoError(f"part files in {work_dir} hold indices outside 0..{n_rows - 1} (e.g. {outside[:3]})")
    missing = [i for i in range(n_rows) if i not in scores]
    if missing:
        raise CwpoError(
            f"{len(missing)} of {n_rows} pairs have no score in {work_dir} (e.g. rows {missing[:5]}); "
            "run annotate again to finish them"
        )
    return [scores[i] for i in range(n_rows)]


def check_manifest(work_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` into a new work folder, or check that an existing one describes the same job.

    Raises:
        CwpoError: the folder holds parts of a different job (another input, annotator or batching), or parts
            without a manifest.
    """
    path = Path(work_dir) / MANIFEST
    if path.exists():
        existing = json.loads(path.read_text())
        manifest = json.loads(json.dumps(manifest, sort_keys=True, default=str))
        if existing != manifest:
            differing = sorted(k for k in set(existing) | set(manifest) if existing.get(k) != manifest.get(k))
            raise CwpoError(
                f"{work_dir} holds the parts of a different annotation job (differs in: {differing}); "
                "delete it or run with resume=False (--resume false) to start over"
            )
        return
    parts = sorted(p.name for p in Path(work_dir).glob(f"{PART_PREFIX}*.jsonl"))
    if parts:
        raise CwpoError(
            f"{work_dir} holds scores ({', '.join(parts)}) but no {MANIFEST}, so nothing says which data and "
            "annotator they belong to; delete the folder or run with resume=False (--resume false) to start over"
        )
    write_json(path, manifest)
