"""Stage caching: each stage's artefacts live in a folder named by a hash of everything that decides them.

A stage folder is ``<run_dir>/<stage>/<key>/``. The stage writes its files there and, last of all, an atomic
``DONE.json`` marker holding its outputs' summary. A folder without the marker is unfinished work: a rerun
removes it and starts that stage again, so a kill mid-stage never leaves a result that looks finished; only work a
stage knows how to resume (``keep``: annotate's ``*.parts`` folder, whose manifest a resume checks) stays.

A stage's key is the hash of

- the resolved values of the experiment-config fields it *declares* it reads (``reads``: dotted paths such as
  ``strong.po_lr``; the audit test runs an experiment on a :class:`ReadRecorder`-wrapped config and fails when a
  stage reads a field it does not declare, or declares one it does not read);
- its other ``inputs``: the seed, the method, and the keys of the stages whose output it reads;
- the content hash of every local file or folder named in those values (a dataset file, a model folder), so an
  in-place edit is seen; hashes are cached by (path, size, mtime, ctime) in ``<run_dir>/file_hashes.json``, so a
  big file is read once;
- the code: cwpo's version, a hash of every ``cwpo/**/*.py`` source file (so an uncommitted edit, even to a
  docstring, recomputes every stage), and the torch / transformers / peft / lightning versions.

Changing one input changes that stage's key and every key downstream of it, and nothing else. A dry pass
(:meth:`StageRunner.planning`) computes every key without running anything: ``cwpo run`` uses it for the stage
count of its ``[k/N]`` progress lines, and ``<run_dir>/index.json`` maps (stage, method, seed) to the folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cwpo.io import file_hash, plain_data, stable_hash, write_json

log = logging.getLogger(__name__)

MARKER = "DONE.json"
INDEX = "index.json"
HASH_CACHE = "file_hashes.json"


@dataclass(frozen=True)
class StageResult:
    """What a finished stage left: its folder, key and summary, and whether this run computed it."""

    name: str
    key: str
    path: Path
    summary: dict[str, Any]
    cached: bool


# -- the code and the files a stage reads ---------------------------------------------------------------------
@cache
def code_fingerprint() -> dict[str, str]:
    """cwpo's version, a hash of its source files (uncommitted edits included) and the versions of the libraries
    that compute a stage's result."""
    from importlib.metadata import PackageNotFoundError, version

    import cwpo

    root = Path(cwpo.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    out = {"cwpo": cwpo.__version__, "source": digest.hexdigest()[:16]}
    for package in ("torch", "transformers", "peft", "lightning"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


def _loader_names() -> frozenset[str]:
    from cwpo.data.registry import LOADER_NAMES

    return frozenset(LOADER_NAMES) | {"synthetic"}


_NAMES = _loader_names()


def local_paths(value: Any) -> list[str]:
    """Every string inside ``value`` (nested dicts and lists) that names an existing local file or folder (a
    dataset loader's name, such as ``synthetic``, is a name even where a folder of that name exists)."""
    found: list[str] = []
    if isinstance(value, dict):
        for item in value.values():
            found += local_paths(item)
    elif isinstance(value, list | tuple):
        for item in value:
            found += local_paths(item)
    elif isinstance(value, str) and value and len(value) < 4096 and value not in _NAMES:
        with contextlib.suppress(OSError):
            if Path(value).expanduser().exists():
                found.append(value)
    return found


class FileHasher:
    """Content hashes of files and folders, cached by (path, size, mtime, ctime) in a JSON file, so an unchanged
    file is read once and an edited one (its mtime and ctime change) is read again."""

    def __init__(self, cache_path: Path | None):
        self.cache_path = cache_path
        self._cache: dict[str, str] = {}
        if cache_path is not None and cache_path.exists():
            with contextlib.suppress(ValueError, OSError):
                self._cache = json.loads(cache_path.read_text())
        self._dirty = False

    def _file(self, path: Path) -> str:
        st = path.stat()
        token = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
        if token not in self._cache:
            self._cache[token] = file_hash(path)
            self._dirty = True
        return self._cache[token]

    def hash(self, name: str) -> str:
        path = Path(name).expanduser()
        if path.is_file():
            return self._file(path)
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return stable_hash([[p.relative_to(path).as_posix(), self._file(p)] for p in files])

    def store(self) -> None:
        if self._dirty and self.cache_path is not None:
            write_json(self.cache_path, self._cache)
            self._dirty = False


# -- which config fields a stage reads -------------------------------------------------------------------------
class ReadRecorder:
    """Records which leaves of an experiment config each stage reads (the audit of the stages' ``reads``).

    :meth:`wrap` returns a stand-in for the config whose attribute reads are recorded; reads are attributed to
    the stage being run (its key, its preparation since the previous stage ended included); reads made outside
    any stage (:meth:`StageRunner.outside`, or the fields in ``ignore``) are not attributed.
    """

    def __init__(self, ignore: Iterable[str] = ()):
        self.ignore = set(ignore)
        self.by_key: dict[str, set[str]] = {}
        self.pending: set[str] = set()
        self.current: str | None = None
        self.outside = False

    def wrap(self, config: Any) -> Any:
        return _Recording(config, "", self)

    def record(self, path: str) -> None:
        if path in self.ignore or self.outside:
            return
        (self.by_key.setdefault(self.current, set()) if self.current else self.pending).add(path)

    def begin(self, key: str) -> None:
        self.by_key.setdefault(key, set()).update(self.pending)
        self.pending = set()
        self.current = key

    def end(self) -> None:
        self.current = None
        self.pending = set()


def _is_section(value: Any, prefix: str) -> bool:
    """The config's own sections (data, sft, eval, ...) and, inside a stage's section, its model block: their
    fields are recorded one by one; every other value (a stage's data and trainer blocks, an ``optim``) is a leaf."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return False
    return prefix == "" or (prefix.count(".") == 1 and type(value).__name__.endswith("Model"))


class _Recording:
    """A config section whose field reads are recorded; nested sections are wrapped, leaves returned as they are."""

    def __init__(self, target: Any, prefix: str, recorder: ReadRecorder):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_recorder", recorder)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        path = f"{self._prefix}{name}"
        if _is_section(value, self._prefix):
            return _Recording(value, f"{path}.", self._recorder)
        self._recorder.record(path)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a recorded config is read-only")


def unwrap(config: Any) -> Any:
    """The config behind a :meth:`ReadRecorder.wrap` stand-in (the config itself otherwise)."""
    return config._target if isinstance(config, _Recording) else config


def resolve(config: Any, path: str) -> Any:
    """The value at a dotted ``path`` of ``config`` (``policy.model.optim``)."""
    value = unwrap(config)
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


# -- running and planning --------------------------------------------------------------------------------------
@dataclass
class _Planned:
    name: str
    key: str
    seed: Any
    methods: list[str]
    upstream: list[str]
    reads: tuple[str, ...] = ()
    done: bool = False
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class StageRunner:
    """Runs stages once per distinct key; later calls with the same key read the cached result.

    Args:
        run_dir: folder holding every stage's artefacts.
        config: the experiment config the stages' ``reads`` are resolved in (none: stages declare no reads).
        recorder: records the config fields each stage reads (the audit; ``None`` in a normal run).
    """

    def __init__(self, run_dir: str | Path, config: Any = None, recorder: ReadRecorder | None = None):
        self.run_dir = Path(run_dir)
        self.config = unwrap(config)
        self.recorder = recorder
        self.computed: list[str] = []
        self.reused: list[str] = []
        self.dry = False
        self.hasher = FileHasher(self.run_dir / HASH_CACHE)
        self.graph: dict[str, _Planned] = {}  # key -> what it is, in the order first seen
        self._plan: dict[str, _Planned] | None = None
        self._seen: set[str] = set()
        self._start = time.perf_counter()

    # -- keys
    def key_material(self, name: str, inputs: dict[str, Any], reads: Iterable[str] = ()) -> dict[str, Any]:
        """Everything a stage's key hashes (see the module docstring)."""
        values = {path: plain_data(resolve(self.config, path)) for path in sorted(set(reads))}
        # Files inside the run folder are upstream stages' outputs: their keys stand for them.
        inside = self.run_dir.resolve()
        files = sorted({p for v in (values, inputs) for p in local_paths(v)
                        if not Path(p).expanduser().resolve().is_relative_to(inside)})  # fmt: skip
        material: dict[str, Any] = {"stage": name, "inputs": inputs, "config": values, "code": code_fingerprint()}
        if files:
            material["files"] = {p: self.hasher.hash(p) for p in files}
            self.hasher.store()
        return material

    def key(self, name: str, inputs: dict[str, Any], reads: Iterable[str] = ()) -> str:
        return stable_hash(self.key_material(name, inputs, reads))

    def _note(self, name: str, key: str, inputs: dict[str, Any], method: str | None, reads: tuple[str, ...]):
        text = json.dumps(inputs, sort_keys=True, default=str)
        if key not in self.graph:
            upstream = [k for k in self.graph if k in text]
            self.graph[key] = _Planned(name, key, inputs.get("seed"), [method] if method else [], upstream, reads)
        return self.graph[key]

    def methods_of(self, key: str) -> list[str]:
        """The methods a stage serves: its own, those of the stages downstream of it, else those that every stage
        it reads serves (the SFT model's generations: their SFT's; held-out accuracy: its PO's)."""
        graph = self.graph
        down: dict[str, list[str]] = {}
        for k, node in graph.items():
            for up in node.upstream:
                down.setdefault(up, []).append(k)
        found: list[str] = []
        stack, seen = [key], set()
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            found += [m for m in graph[k].methods if m not in found]
            stack += down.get(k, [])
        if not found and graph[key].upstream:  # the methods every stage it reads serves (held-out: its PO's)
            ups = [self.methods_of(up) for up in graph[key].upstream]
            found = [m for m in ups[0] if all(m in other for other in ups[1:])]
        order = [m for node in graph.values() for m in node.methods]  # the order the run trains them in
        return sorted(found, key=order.index)

    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        """Inside: :meth:`run` computes keys and records the stage graph but runs nothing (results are the cached
        ones where a stage is done, empty otherwise). On leaving, the plan is what later :meth:`run` calls count
        against (``[k/N]``, ETA) and what ``index.json`` lists."""
        self.dry, self.graph = True, {}
        try:
            yield
        finally:
            self.dry = False
            if self.recorder is not None:
                self.recorder.end()  # the dry pass's reads are no stage's
        self._plan = dict(self.graph)
        self._seen = set()
        for node in self._plan.values():
            node.done = (self.run_dir / node.name / node.key / MARKER).exists()
        self._start = time.perf_counter()
        self.write_index()

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """Config reads inside are no stage's (the report rows built between stages)."""
        if self.recorder is None:
            yield
            return
        self.recorder.end()
        self.recorder.outside = True
        try:
            yield
        finally:
            self.recorder.outside = False
            self.recorder.end()

    def write_index(self) -> None:
        """``<run_dir>/index.json``: one entry per (stage, method, seed) with its folder and whether it is done."""
        nodes = self._plan if self._plan is not None else self.graph
        entries = []
        for key, node in nodes.items():
            for method in self.methods_of(key) or [None]:
                entries.append({"stage": node.name, "method": method, "seed": node.seed,
                                "folder": f"{node.name}/{key}", "done": node.done})  # fmt: skip
        write_json(self.run_dir / INDEX, {"run_dir": str(self.run_dir), "stages": entries})

    # -- the progress line
    def _progress(self, node: _Planned, cached: bool, seconds: float) -> None:
        plan = self._plan or {}
        total = len(plan) or len(self._seen)
        k = len(self._seen)
        methods = self.methods_of(node.key)
        all_methods = {m for p in self.graph.values() for m in p.methods}
        if len(methods) > 1 and set(methods) == all_methods:
            who = "(all methods)"
        else:
            who = ",".join(methods[:3]) + (f" +{len(methods) - 3}" if len(methods) > 3 else "") if methods else "-"
        seed = "" if node.seed is None else f" seed {node.seed}"
        what = "cached" if cached else f"done in {_duration(seconds)}"
        elapsed = time.perf_counter() - self._start
        # ETA: the stages still to compute, each at the mean time this run's stages of its kind took.
        times: dict[str, list[float]] = {}
        for p in plan.values():
            if p.seconds is not None:
                times.setdefault(p.name, []).append(p.seconds)
        every = [s for v in times.values() for s in v]
        todo = [p for p in plan.values() if not p.done and p.key not in self._seen]
        if not todo:
            eta = "0 s"
        elif every:
            mean = sum(every) / len(every)
            eta = _duration(sum(sum(times[p.name]) / len(times[p.name]) if p.name in times else mean for p in todo))
        else:
            eta = "?"
        log.info("[%*d/%d] %s %s%s: %s; elapsed %s, ETA %s", len(str(total)), k, total, node.name, who, seed, what,
                 _duration(elapsed), eta)  # fmt: skip

    # -- running
    def run(
        self,
        name: str,
        inputs: dict[str, Any],
        fn: Callable[[Path], dict[str, Any]],
        keep: tuple[str, ...] = (),
        *,
        reads: Iterable[str] = (),
        method: str | None = None,
    ) -> StageResult:
        """Return stage ``name``'s result, calling ``fn(folder) -> summary`` only if it is not done.

        ``reads`` names the config fields the stage reads (dotted paths); ``inputs`` holds the rest of what decides
        the result: the seed, the method, the keys of upstream stages. ``keep`` names entries of an unfinished
        folder that ``fn`` resumes from (they are not removed). ``method`` tags the stage with the method it
        trains (for ``index.json`` and the progress line; shared stages take their downstream stages' methods).
        """
        reads = tuple(reads)
        key = self.key(name, inputs, reads)
        if self.recorder is not None and not self.dry:
            self.recorder.begin(f"{name}/{key}")
        try:
            return self._run(name, key, inputs, fn, keep, reads, method)
        finally:
            if self.recorder is not None and not self.dry:
                self.recorder.end()

    def _run(self, name, key, inputs, fn, keep, reads, method) -> StageResult:
        folder = self.run_dir / name / key
        marker = folder / MARKER
        node = self._note(name, key, inputs, method, reads)
        if self.dry:
            summary = json.loads(marker.read_text())["summary"] if marker.exists() else {}
            return StageResult(name, key, folder, summary, cached=marker.exists())
        label = f"{name}/{key}"
        first = key not in self._seen
        self._seen.add(key)
        node = (self._plan or {}).get(key, node)
        if marker.exists():
            self.reused.append(label)
            if first:
                node.done = True
                self._progress(node, True, 0.0)
            return StageResult(name, key, folder, json.loads(marker.read_text())["summary"], cached=True)
        if folder.exists():
            kept = sorted(entry.name for entry in folder.iterdir() if entry.name in keep)
            log.info("stage %s: removing unfinished work from an interrupted run%s", label,
                     f" (resuming from {', '.join(kept)})" if kept else "")  # fmt: skip
            for entry in folder.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "inputs.json", {**self.key_material(name, inputs, reads), "method": method})
        start = time.perf_counter()
        summary = fn(folder)
        elapsed = time.perf_counter() - start
        write_json(marker, {"summary": summary, "seconds": round(elapsed, 3)})
        self.computed.append(label)
        node.done, node.seconds = True, elapsed
        self._progress(node, False, elapsed)
        if self._plan is not None:
            self.write_index()
        return StageResult(name, key, folder, summary, cached=False)
