"""Atomic file writes and stable hashing.

Everything cwpo writes that a later run could mistake for finished work (datasets, caches, reports,
stage markers) goes through :func:`atomic_path`: it is written under a temporary name in the same folder
and renamed into place only when complete, so a kill leaves either the old file or none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block ends without error.

    Args:
        path: the final file (or folder, with ``is_dir=True``).
        is_dir: the caller writes a folder (e.g. ``Dataset.save_to_disk``) instead of a file.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp / mkdtemp create 0600 / 0700: give the result the permissions a plain open() would (the umask's)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
    try:
        yield tmp
        if is_dir:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_figure(path: str | os.PathLike, figure: Any) -> Path:
    """Write a matplotlib ``Figure`` as a PNG, atomically, on the Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def plain_data(value: Any) -> Any:
    """``value`` as plain JSON data for configs, hashes and cards: a dataclass (or anything with ``as_dict``, such
    as a parsed jsonargparse namespace) becomes a dict, tuples lists and keys strings, recursively."""
    if callable(getattr(value, "as_dict", None)):
        return plain_data(value.as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_data(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): plain_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(item) for item in value]
    return value


def stable_hash(obj: Any, *, length: int = 16) -> str:
    """A hex digest of ``obj`` (JSON-serialisable) that is the same across runs and machines."""
    payload = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def file_hash(path: str | os.PathLike, *, length: int = 16) -> str:
    """A hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
