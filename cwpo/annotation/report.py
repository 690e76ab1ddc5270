"""How good are the weak labels? Agreement with held-out human labels, overall, by confidence decile, and for the
top-N % most confident pairs (CW-PO, Fig. 2 and Tables 10-11: the top 30 % agree more often than all pairs).

Takes annotated records (``human_label`` = 1 when the human agrees with the weak order, as ``annotate`` writes
them), so any labeller that writes those columns (the BT and PairRM annotators, the WS-DPO baseline) can reuse it.

Conventions, so that the numbers are exact and reproducible:

- Only records with a ``human_label`` count. Records are ranked by ``confidence`` (or, when a record has none, by
  the margin ``weak_score_chosen - weak_score_rejected``), ties broken by position in the input.
- Decile ``d`` (1 = least confident) holds the records of rank ``floor((d-1)·n/10)`` to ``floor(d·n/10) - 1`` in
  ascending order of confidence, so the bins differ in size by at most one.
- Top-N % keeps ``ceil(n · N/100)`` records with :func:`cwpo.losses.top_n_weights`, the same rule as the top-N
  filtering baseline, so the reported agreement is the agreement of the pairs that baseline would train on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cwpo.errors import DataError
from cwpo.io import write_figure, write_json, write_text

TOP_N_PERCENTS = (10, 20, 30, 40, 50, 75, 100)
"""The top-N % shares of the paper's Tables 10-11."""


def _ranking_key(record: dict[str, Any], row: int) -> float:
    confidence = record.get("confidence")
    if confidence is not None:
        return float(confidence)
    chosen, rejected = record.get("weak_score_chosen"), record.get("weak_score_rejected")
    if chosen is None or rejected is None:
        raise DataError(
            "record has neither 'confidence' nor both weak scores to rank it by", row=row, record_id=record.get("id")
        )
    return abs(float(chosen) - float(rejected))


def _accuracy(agrees: Sequence[bool]) -> float | None:
    return sum(agrees) / len(agrees) if agrees else None


def annotator_report(
    records: Iterable[dict[str, Any]], *, top_n: Sequence[int] = TOP_N_PERCENTS, n_bins: int = 10
) -> dict[str, Any]:
    """Agreement of weak labels with human labels, overall, by confidence bin and for the most confident pairs.

    Args:
        records: annotated pairs with ``human_label`` (1 = the human agrees with the weak order) and ``confidence``
            (or weak scores); records without ``human_label`` are counted and skipped.
        top_n: percentages N of the top-N % rows.
        n_bins: number of confidence bins (10: deciles).

    Returns:
        A JSON-ready dict: ``n_pairs``, ``n_labelled``, ``accuracy``, ``mean_confidence``, ``bins`` (one dict per
        bin: ``bin``, ``n``, ``confidence_min``, ``confidence_max``, ``accuracy``) and ``top_n`` (one dict per N:
        ``percent``, ``n``, ``min_confidence``, ``accuracy``). Accuracies are fractions in [0, 1], ``None`` for an
        empty group.
    """
    import torch

    from cwpo.losses import top_n_weights

    rows = list(records)
    labelled = [(i, r) for i, r in enumerate(rows) if r.get("human_label") is not None]
    keys = [_ranking_key(r, i) for i, r in labelled]
    agrees = [int(r["human_label"]) == 1 for _, r in labelled]
    n = len(labelled)
    order = sorted(range(n), key=lambda j: (keys[j], j))
    bins = []
    for b in range(n_bins):
        members = order[b * n // n_bins : (b + 1) * n // n_bins]
        bins.append(
            {
                "bin": b + 1,
                "n": len(members),
                "confidence_min": min((keys[j] for j in members), default=None),
                "confidence_max": max((keys[j] for j in members), default=None),
                "accuracy": _accuracy([agrees[j] for j in members]),
            }
        )
    top = []
    confidence = torch.tensor(keys, dtype=torch.float64)
    for percent in top_n:
        kept = top_n_weights(confidence, percent / 100).bool().tolist() if n else []
        members = [j for j in range(n) if kept[j]]
        top.append(
            {
                "percent": percent,
                "n": len(members),
                "min_confidence": min((keys[j] for j in members), default=None),
                "accuracy": _accuracy([agrees[j] for j in members]),
            }
        )
    return {
        "n_pairs": len(rows),
        "n_labelled": n,
        "accuracy": _accuracy(agrees),
        "mean_confidence": sum(keys) / n if n else None,
        "bins": bins,
        "top_n": top,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def report_markdown(report: dict[str, Any], *, title: str = "Weak annotator") -> str:
    """The report as a markdown page (accuracies in %)."""
    lines = [
        f"# {title}: agreement with human labels",
        "",
        f"Pairs: {report['n_pairs']}, with a human label: {report['n_labelled']}. "
        f"Accuracy (weak order = human order): **{_pct(report['accuracy'])} %**. "
        f"Mean confidence: {_num(report['mean_confidence'])}.",
        "",
        "## By confidence bin (1 = least confident)",
        "",
        "| bin | pairs | confidence | accuracy % |",
        "| ---: | ---: | --- | ---: |",
    ]
    for b in report["bins"]:
        span = f"{_num(b['confidence_min'])} – {_num(b['confidence_max'])}"
        lines.append(f"| {b['bin']} | {b['n']} | {span} | {_pct(b['accuracy'])} |")
    lines += [
        "",
        "## Top-N % most confident pairs",
        "",
        "| N % | pairs | min confidence | accuracy % |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for t in report["top_n"]:
        lines.append(f"| {t['percent']} | {t['n']} | {_num(t['min_confidence'])} | {_pct(t['accuracy'])} |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str | os.PathLike, *, title: str = "Weak annotator") -> Path:
    """Accuracy by confidence bin and for the top-N % as a PNG (matplotlib's Agg backend), written atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    bins = report["bins"]
    left.bar([b["bin"] for b in bins], [100 * (b["accuracy"] or 0.0) for b in bins], color="tab:blue")
    left.set(xlabel="confidence bin (1 = least confident)", ylabel="agreement with humans (%)", ylim=(0, 100))
    left.set_xticks([b["bin"] for b in bins])
    top = [t for t in report["top_n"] if t["accuracy"] is not None]
    right.plot([t["percent"] for t in top], [100 * t["accuracy"] for t in top], marker="o", color="tab:orange")
    right.set(xlabel="top-N % most confident pairs", ylabel="agreement with humans (%)", ylim=(0, 100))
    for axis in (left, right):
        if report["accuracy"] is not None:
            axis.axhline(100 * report["accuracy"], color="grey", linestyle="--", linewidth=1, label="all pairs")
        axis.axhline(50, color="lightgrey", linestyle=":", linewidth=1, label="chance")
        axis.legend(loc="lower right")
    fig.suptitle(f"{title} (n = {report['n_labelled']})")
    fig.tight_layout()
    return write_figure(path, fig)


def write_report(
    records: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    title: str = "Weak annotator",
    stem: str = "annotator_report",
    top_n: Sequence[int] = TOP_N_PERCENTS,
) -> dict[str, Any]:
    """Compute :func:`annotator_report` and write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` to ``out_dir``.

    Returns:
        The report dict, with ``paths`` (the three files) added.
    """
    report = annotator_report(records, top_n=top_n)
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json", "png": out_dir / f"{stem}.png"}
    write_text(paths["markdown"], report_markdown(report, title=title))
    write_json(paths["json"], report)
    if report["n_labelled"]:
        plot_report(report, paths["png"], title=title)
    else:
        paths.pop("png")
    return {**report, "paths": {k: str(v) for k, v in paths.items()}}
