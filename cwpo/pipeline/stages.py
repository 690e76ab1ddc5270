"""Stage caching: each stage's artefacts live in a folder named by a hash of everything that decides them.

A stage folder is ``<run_dir>/<stage>/<key>/``. The stage writes its files there and, last of all, an atomic
``DONE.json`` marker holding its outputs' summary. A folder without the marker is unfinished work: a rerun
removes it and starts that stage again, so a kill mid-stage never leaves a result that looks finished; only work a
stage knows how to resume (``keep``: annotate's ``*.parts`` folder, whose manifest a resume checks) stays.
Changing one input changes that stage's key and every key downstream of it, and nothing else.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cwpo.io import stable_hash, write_json

log = logging.getLogger(__name__)

MARKER = "DONE.json"


@dataclass(frozen=True)
class StageResult:
    """What a finished stage left: its folder, key and summary, and whether this run computed it."""

    name: str
    key: str
    path: Path
    summary: dict[str, Any]
    cached: bool


class StageRunner:
    """Runs stages once per distinct input; later calls with the same inputs read the cached result.

    Args:
        run_dir: folder holding every stage's artefacts.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.computed: list[str] = []
        self.reused: list[str] = []

    def key(self, name: str, inputs: dict[str, Any]) -> str:
        return stable_hash({"stage": name, "inputs": inputs})

    def run(
        self, name: str, inputs: dict[str, Any], fn: Callable[[Path], dict[str, Any]], keep: tuple[str, ...] = ()
    ) -> StageResult:
        """Return stage ``name``'s result for ``inputs``, calling ``fn(folder) -> summary`` only if not done.

        ``inputs`` must hold everything that decides the result, including the keys of upstream stages. ``keep``
        names entries of an unfinished folder that ``fn`` resumes from (they are not removed).
        """
        key = self.key(name, inputs)
        folder = self.run_dir / name / key
        marker = folder / MARKER
        label = f"{name}/{key}"
        if marker.exists():
            self.reused.append(label)
            log.info("stage %s: cached", label)
            return StageResult(name, key, folder, json.loads(marker.read_text())["summary"], cached=True)
        if folder.exists():
            kept = sorted(entry.name for entry in folder.iterdir() if entry.name in keep)
            log.info("stage %s: removing unfinished work from an interrupted run%s", label,
                     f" (resuming from {', '.join(kept)})" if kept else "")  # fmt: skip
            for entry in folder.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "inputs.json", inputs)
        start = time.perf_counter()
        summary = fn(folder)
        elapsed = time.perf_counter() - start
        write_json(marker, {"summary": summary, "seconds": round(elapsed, 3)})
        self.computed.append(label)
        log.info("stage %s: done in %.1f s", label, elapsed)
        return StageResult(name, key, folder, summary, cached=False)
