"""The results report: a Table-1-style markdown table (methods x objectives, mean ± std over seeds), CSV and
JSON beside it, PNG plots, and the exact commands and config text that produced the numbers.

Input rows, one per run: ``{"method", "objective", "seed", "gra", "ties"?, "dataset"?, ...}`` (extra keys are
kept in the CSV/JSON). With a ``dataset`` key there is one table per dataset. Cells are the mean over seeds ±
the **sample** standard deviation (ddof 1) of the seeds' values, with ``decimals`` digits; a cell with one
seed shows the mean alone (no ±), a missing combination shows ``–``. Methods and objectives keep the order in
which they first appear in the rows.

Every file is written atomically (``cwpo.io``); plots use matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cwpo.errors import DataError
from cwpo.io import write_figure, write_json, write_text

MISSING = "–"
_REQUIRED = ("method", "objective", "seed")


def _check_rows(rows: Sequence[Mapping[str, Any]], metric: str) -> None:
    seen: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        for key in (*_REQUIRED, metric):
            if key not in row or row[key] is None:
                raise DataError(f"result row has no {key!r}", row=i)
        value = row[metric]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise DataError(f"result row's {metric!r} is not a finite number: {value!r}", row=i)
        key = (row.get("dataset"), row["method"], row["objective"], row["seed"])
        if key in seen:
            raise DataError(f"duplicate result for {key} (also row {seen[key]})", row=i)
        seen[key] = i


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; ``None`` for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(rows: Sequence[Mapping[str, Any]], metric: str = "gra") -> list[dict[str, Any]]:
    """One entry per (dataset, method, objective): ``mean``, ``std`` (ddof 1, ``None`` for one seed),
    ``n_seeds``, ``seeds``, and ``ties_mean`` when the rows have ``ties``."""
    _check_rows(rows, metric)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("dataset"), row["method"], row["objective"]), []).append(row)
    summary = []
    for (dataset, method, objective), members in groups.items():
        mean, std = mean_std([float(r[metric]) for r in members])
        entry: dict[str, Any] = {
            "dataset": dataset,
            "method": method,
            "objective": objective,
            "metric": metric,
            "mean": mean,
            "std": std,
            "n_seeds": len(members),
            "seeds": [r["seed"] for r in members],
        }
        ties = [float(r["ties"]) for r in members if r.get("ties") is not None]
        if ties:
            entry["ties_mean"] = sum(ties) / len(ties)
        summary.append(entry)
    return summary


def format_cell(mean: float, std: float | None, decimals: int = 1) -> str:
    """``"61.3 ± 1.2"``, or ``"61.3"`` without a standard deviation."""
    if std is None:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _markdown_grid(header: str, methods: list, objectives: list, cells: Mapping[tuple, str]) -> list[str]:
    lines = [
        "| " + " | ".join([header, *map(str, objectives)]) + " |",
        "| " + " | ".join(["---"] + ["---:"] * len(objectives)) + " |",
    ]
    for method in methods:
        row = [cells.get((method, objective), MISSING) for objective in objectives]
        lines.append("| " + " | ".join([str(method), *row]) + " |")
    return lines


def results_table(rows: Sequence[Mapping[str, Any]], metric: str = "gra", decimals: int = 1) -> str:
    """Markdown table(s) of ``metric``: methods as rows, objectives as columns, mean ± std over seeds.

    One table per dataset when rows carry ``dataset`` (a ``### <dataset>`` heading above each).
    """
    summary = summarize(rows, metric)
    datasets = _ordered(s["dataset"] for s in summary)
    blocks: list[str] = []
    for dataset in datasets:
        part = [s for s in summary if s["dataset"] == dataset]
        methods = _ordered(s["method"] for s in part)
        objectives = _ordered(s["objective"] for s in part)
        cells = {(s["method"], s["objective"]): format_cell(s["mean"], s["std"], decimals) for s in part}
        lines = [f"### {dataset}", ""] if dataset is not None else []
        lines += _markdown_grid("method", methods, objectives, cells)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def ties_table(rows: Sequence[Mapping[str, Any]], metric: str = "gra", decimals: int = 1) -> str | None:
    """Mean ties (% of prompts) per method and objective, or ``None`` when no row has ``ties``."""
    key = "ties_pct" if any(r.get("ties_pct") is not None for r in rows) else "ties"
    if not any(r.get(key) is not None for r in rows):
        return None
    tie_rows = [{**r, "_ties": r[key]} for r in rows if r.get(key) is not None]
    return results_table(tie_rows, metric="_ties", decimals=decimals)


def _csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    columns = _ordered(key for record in records for key in record)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(
            {k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v) for k, v in record.items()}
        )
    return buffer.getvalue()


def plot_metric_by_method(
    summary: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, ylabel: str = "GRA (%)"
) -> Path:
    """Grouped bars: one group per method, one bar per objective, error bars = std over seeds; a panel per dataset."""
    from matplotlib.figure import Figure

    datasets = _ordered(s["dataset"] for s in summary)
    figure = Figure(figsize=(max(5.0, 4.5 * len(datasets)), 4.0))
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    for axis, dataset in zip(axes, datasets, strict=True):
        part = [s for s in summary if s["dataset"] == dataset]
        methods = _ordered(s["method"] for s in part)
        objectives = _ordered(s["objective"] for s in part)
        width = 0.8 / len(objectives)
        by_key = {(s["method"], s["objective"]): s for s in part}
        for j, objective in enumerate(objectives):
            xs, heights, errors = [], [], []
            for i, method in enumerate(methods):
                entry = by_key.get((method, objective))
                if entry is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                heights.append(entry["mean"])
                errors.append(entry["std"] or 0.0)
            axis.bar(xs, heights, width=width, yerr=errors, capsize=3, label=str(objective))
        axis.set_xticks(range(len(methods)))
        axis.set_xticklabels([str(m) for m in methods])
        axis.set_ylabel(ylabel)
        axis.set_title(str(dataset) if dataset is not None else "mean ± std over seeds")
        axis.legend(fontsize="small")
    figure.tight_layout()
    return write_figure(path, figure)


def _confidences(records: Sequence[Mapping[str, Any]]) -> list[float]:
    """The ``confidence`` of every annotated record (each must have one)."""
    confidences = []
    for i, record in enumerate(records):
        if record.get("confidence") is None:
            raise DataError("annotated record has no 'confidence'", row=i, record_id=record.get("id"))
        confidences.append(float(record["confidence"]))
    return confidences


def plot_confidence_histogram(confidences: Sequence[float], path: str | os.PathLike, *, bins: int = 20) -> Path:
    """Histogram of the annotator's confidence over annotated pairs."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.5))
    axis = figure.subplots()
    axis.hist(list(confidences), bins=bins, color="tab:blue", edgecolor="white")
    axis.set(xlabel="confidence c = 2σ(Δ) − 1", ylabel="pairs", title=f"Confidence (n = {len(confidences)})")
    figure.tight_layout()
    return write_figure(path, figure)


def plot_agreement_vs_confidence(annotator: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Agreement with human labels per confidence bin (x = the bin's mean confidence span), all-pairs line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.5))
    axis = figure.subplots()
    bins = [b for b in annotator["bins"] if b["accuracy"] is not None]
    xs = [(b["confidence_min"] + b["confidence_max"]) / 2 for b in bins]
    ys = [100 * b["accuracy"] for b in bins]
    errors = [100 * math.sqrt(b["accuracy"] * (1 - b["accuracy"]) / b["n"]) for b in bins]
    axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, color="tab:orange", label="confidence bin")
    if annotator["accuracy"] is not None:
        axis.axhline(100 * annotator["accuracy"], color="grey", linestyle="--", linewidth=1, label="all pairs")
    axis.axhline(50, color="lightgrey", linestyle=":", linewidth=1, label="chance")
    axis.set(xlabel="confidence", ylabel="agreement with humans (%)", ylim=(0, 100))
    axis.set_title(f"Weak label agreement vs confidence (n = {annotator['n_labelled']})")
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return write_figure(path, figure)


def _fenced(text: str, language: str) -> list[str]:
    fence = "````" if "```" in text else "```"
    return [fence + language, text.rstrip("\n"), fence]


def build_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    commands: str | Sequence[str] = (),
    config_text: str | Mapping[str, str] = "",
    annotated_records: Iterable[Mapping[str, Any]] | None = None,
    title: str = "CW-PO results",
    metric: str = "gra",
    decimals: int = 1,
    sections: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the report files into ``out_dir`` and return their paths by name.

    Files: ``report.md`` (tables, annotator summary, plots, the commands and config), ``results.csv`` (the
    rows as given), ``summary.csv`` (one line per cell), ``results.json`` (rows, summary, annotator numbers,
    commands, config), ``gra_by_method.png``, and with ``annotated_records`` (records with ``confidence`` and
    ``human_label``) ``confidence_hist.png`` and ``agreement_vs_confidence.png``.

    Args:
        rows: one result per run (see the module docstring).
        out_dir: where the files go (created).
        commands: the exact command line(s) that produced the results.
        config_text: the config file text, or ``{file name: text}`` for several.
        annotated_records: the annotator's output on ``D_U``, for the confidence plots.
        title: the page title.
        metric: the row key tabulated and plotted; ``gra`` falls back to ``heldout_human_accuracy`` when no row has a
            GRA (a run without a judge).
        decimals: digits after the point in the tables.
        sections: further markdown lines, put before the commands (e.g. the pipeline's no-gold sections).
    """
    rows = [dict(r) for r in rows]
    if metric == "gra" and rows and not any("gra" in r for r in rows):
        metric = "heldout_human_accuracy"
    out = Path(out_dir)
    # the pipeline's rows name the method (``cw-dpo``) and its table cell (``family``, ``objective``)
    grid_rows = [{**r, "method": r.get("family", r["method"]), **({"ties": r["ties_pct"]} if "ties_pct" in r else {})}
                 for r in rows]  # fmt: skip
    summary = summarize(grid_rows, metric)
    commands_list = [commands] if isinstance(commands, str) else list(commands)
    configs = {"config": config_text} if isinstance(config_text, str) else dict(config_text)
    configs = {name: text for name, text in configs.items() if text}
    paths: dict[str, Path] = {
        "markdown": out / "report.md",
        "csv": out / "results.csv",
        "summary_csv": out / "summary.csv",
        "json": out / "results.json",
        "plot": out / "gra_by_method.png",
    }
    label = {"gra": "GRA (%)", "heldout_human_accuracy": "held-out accuracy vs human (%)"}.get(metric, metric)
    plot_metric_by_method(summary, paths["plot"], ylabel=label)
    records = None
    if annotated_records is not None:
        records = list(annotated_records.to_list() if hasattr(annotated_records, "to_list") else annotated_records)
    alignment, methods, compared = [], None, None
    if rows and all(k in rows[0] for k in ("wins", "losses", "n")):
        from cwpo.evaluation.alignment_report import alignment_sections

        alignment, plots, methods, compared = alignment_sections(rows, out, records)
        paths.update(plots)
        paths["methods_csv"], paths["comparisons_csv"] = out / "methods.csv", out / "comparisons.csv"
    if any("per_prompt" in r for r in rows):
        paths["per_prompt"] = out / "per_prompt.json"

    annotator = None
    if records is not None:
        from cwpo.annotation.report import annotator_report

        confidences = _confidences(records)
        paths["confidence_hist"] = plot_confidence_histogram(confidences, out / "confidence_hist.png")
        annotator = annotator_report(records)
        if annotator["n_labelled"]:
            paths["agreement_plot"] = plot_agreement_vs_confidence(annotator, out / "agreement_vs_confidence.png")

    lines = [f"# {title}", "", *alignment, *([""] if alignment else [])]
    lines += [f"## {label}: mean ± std over seeds", "", results_table(grid_rows, metric, decimals).rstrip()]
    n_seeds = sorted({s["n_seeds"] for s in summary})
    lines += [
        "",
        f"Mean ± sample standard deviation (ddof 1) over seeds; seeds per cell: {', '.join(map(str, n_seeds))}. "
        "A cell with one seed shows no ±.",
    ]
    ties = ties_table(grid_rows, metric, decimals)
    if ties is not None:
        lines += ["", "## Ties (% of prompts, not counted as wins)", "", ties.rstrip()]
    lines += ["", f"![{label} by method]({paths['plot'].name})"]
    if annotator is not None:
        top30 = next((t for t in annotator["top_n"] if t["percent"] == 30), None)
        lines += [
            "",
            "## Weak annotator",
            "",
            f"Annotated pairs: {annotator['n_pairs']}, with a human label: {annotator['n_labelled']}.",
        ]
        if annotator["accuracy"] is not None:
            agreement = f"Agreement with humans: all pairs {100 * annotator['accuracy']:.1f} %"
            if top30 is not None and top30["accuracy"] is not None:
                agreement += f", top 30 % most confident {100 * top30['accuracy']:.1f} %"
            lines.append(agreement + ".")
        lines += ["", f"![confidence histogram]({paths['confidence_hist'].name})"]
        if "agreement_plot" in paths:
            lines.append(f"![agreement vs confidence]({paths['agreement_plot'].name})")
    if sections:
        lines += ["", *sections]
    lines += ["", "## Reproduce", ""]
    if commands_list:
        lines += _fenced("\n".join(commands_list), "bash")
    else:
        lines.append("(no commands recorded)")
    for name, text in configs.items():
        lines += ["", f"### {name}", "", *_fenced(text, "yaml")]
    lines += ["", "## Files", "", *(f"- `{p.name}`" for p in paths.values())]

    per_prompt = [{"method": r["method"], "seed": r["seed"], **r["per_prompt"]} for r in rows if "per_prompt" in r]
    rows = [{k: v for k, v in r.items() if k != "per_prompt"} for r in rows]
    write_text(paths["csv"], _csv_text(rows))
    write_text(paths["summary_csv"], _csv_text(summary))
    extra: dict[str, Any] = {}
    if methods is not None:
        write_text(paths["methods_csv"], _csv_text(methods))
        write_text(paths["comparisons_csv"], _csv_text(compared) if compared else "")
        extra = {"methods": methods, "comparisons": compared}
    if per_prompt:
        write_json(paths["per_prompt"], per_prompt)
    write_json(
        paths["json"],
        {"rows": rows, **extra, "summary": summary, "annotator": annotator, "commands": commands_list,
         "config": configs},
    )  # fmt: skip
    write_text(paths["markdown"], "\n".join(lines) + "\n")
    return paths
