"""One rank of the two-process DDP runs of ``test_ddp.py`` (launched by the test, like ``torchrun`` would).

    LOCAL_RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/reliability/ddp_fit.py ROOT DATA_DIR

Trains the annotator, then the policy, with ``accelerator=cpu, devices=2, strategy=ddp`` (gloo) through
``cwpo.fit.build_cli`` under ``ROOT/<model>``; each rank records its own per-step losses
(``steps-rank<r>.jsonl``). Rank 1 also records, through a Python audit hook, every file it creates, writes,
renames or removes under ``ROOT``, and leaves that list in ``DATA_DIR/rank1-writes.json`` (outside ``ROOT``);
it ends with two probe writes of its own (``probe-rank1.*``), so the test can tell a working hook from a deaf one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.reliability.conftest import ddp_fit_args  # noqa: E402


def watch_writes(root: Path) -> list[str]:
    """Record every write-like file operation under ``root`` made from Python (``open`` for writing, ``os.open``
    with a write flag, rename/replace, remove, mkdir)."""
    writes: list[str] = []
    prefix = str(root.resolve())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under_root(path) -> bool:
        try:
            return str(Path(os.fsdecode(path)).resolve()).startswith(prefix)
        except (TypeError, ValueError):
            return False

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and under_root(args[0]):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & write_flags):
                writes.append(f"open {args[0]} {mode or flags}")
        elif event == "os.mkdir" and args and under_root(args[0]) and not os.path.isdir(args[0]):
            writes.append(f"{event} {args[0]}")  # (mkdir of an existing folder, e.g. mkdir(exist_ok=True), is no write)
        elif event in ("os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move") and args:
            if any(under_root(a) for a in args[:2] if isinstance(a, str | bytes | os.PathLike)):
                writes.append(f"{event} {args[:2]}")

    sys.addaudithook(hook)
    return writes


def main(root: Path, data_dir: Path) -> None:
    import torch

    torch.set_num_threads(1)
    rank = int(os.environ["LOCAL_RANK"])
    writes = watch_writes(root) if rank != 0 else None

    from cwpo import fit

    for model in ("annotator", "policy"):
        fit.build_cli(model, ddp_fit_args(model, root / model, data_dir, devices=2))
    if writes is not None:
        # Prove the hook sees writes: a probe file through cwpo.io (mkstemp + os.replace) and through plain open.
        from cwpo.io import write_json

        write_json(root / "probe-rank1.json", {})
        with open(root / "probe-rank1.txt", "w") as f:
            f.write("probe")
        (data_dir / "rank1-writes.json").write_text(json.dumps(writes, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
