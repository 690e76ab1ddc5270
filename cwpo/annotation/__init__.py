"""Stage 2 of CW-PO: weak labels with confidence, and how good they are.

Usage::

    from cwpo.annotation import annotate_dataset, write_report
    result = annotate_dataset("runs/annotator/.../last.ckpt", "synthetic", "runs/d_u_annotated.jsonl", part="d_u")
    result.agreement, result.pairs_per_second

- :func:`annotate_dataset` (``annotate.py``): score, order (Eq. 6), confidence (Eq. 8), write; resumable, sharded
  over ranks through Lightning's predict loop.
- :func:`label_pairs` (``labels.py``): scores -> ordered pairs with ``weak_score_*``, ``confidence``,
  ``human_label``, ``agrees_with_human``.
- :func:`annotator_report` / :func:`write_report` (``report.py``): agreement overall, by confidence decile and for
  the top-N % (markdown, JSON, PNG); takes records, so any labeller can use it.
- :func:`load_annotator` / :func:`export_annotator` (``loading.py``): a ``.ckpt`` or an exported HF folder.
- ``shards.py``: the part files, resume and merge.

Importing this package stays light; names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnnotationResult": "cwpo.annotation.annotate",
    "annotate_dataset": "cwpo.annotation.annotate",
    "label_pairs": "cwpo.annotation.labels",
    "TOP_N_PERCENTS": "cwpo.annotation.report",
    "annotator_report": "cwpo.annotation.report",
    "report_markdown": "cwpo.annotation.report",
    "write_report": "cwpo.annotation.report",
    "load_annotator": "cwpo.annotation.loading",
    "export_annotator": "cwpo.annotation.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cwpo.annotation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
