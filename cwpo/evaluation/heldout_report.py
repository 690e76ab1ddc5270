"""Report sections for data without a gold model (real preference data such as HH-RLHF): every policy and SFT model
judged by the held-out human labels, paired comparisons of those outcomes, the weak annotator on the held-out test
pairs, the answers of every model to the same test prompts side by side, and the wall time of every stage.

Held-out preference accuracy: on each test pair (never trained on), does the model's implicit reward order the two
responses as the human did? For an aligned policy the reward is ``β (log π(y|x) − log π_SFT(y|x))``; for an SFT model,
which has no DPO reference, ``log π_SFT(y|x) − log π_base(y|x)`` (see
:meth:`cwpo.pipeline.experiment.Experiment.sft_heldout`). Ties count as wrong. SE: binomial over test pairs (and
seeds), the pairs being the unit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cwpo.evaluation.alignment_report import comparison_table
from cwpo.evaluation.comparisons import comparisons, significance_sentence
from cwpo.evaluation.metrics import mean_se


def _pooled_accuracy(members: Sequence[Mapping[str, Any]], per_pair_key: str) -> tuple[float, float, int]:
    values = [v for r in members for v in r[per_pair_key]]
    mean, se = mean_se(values)
    return mean, se, len(values)


def heldout_table(rows: Sequence[Mapping[str, Any]], sft_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: held-out accuracy vs the human labels, ± SE, per aligned method and per SFT model."""
    lines = ["| model | implicit reward | seeds × test pairs | accuracy vs human (%) ± SE |", "|---|---|---:|---:|"]
    for name in dict.fromkeys(r["method"] for r in sft_rows):
        members = [{"v": [100.0 * v for v in r["per_pair"]]} for r in sft_rows if r["method"] == name]
        mean, se, n = _pooled_accuracy(members, "v")
        lines.append(
            f"| {name} | log π_SFT − log π_base | {len(members)} × {n // len(members)} | {mean:.1f} ± {se:.1f} |"
        )
    for name in dict.fromkeys(r["method"] for r in rows):
        members = [r for r in rows if r["method"] == name and "heldout" in (r.get("per_prompt") or {})]
        if not members:
            continue
        mean, se, n = _pooled_accuracy([r["per_prompt"] for r in members], "heldout")
        lines.append(
            f"| {name} | β (log π − log π_SFT) | {len(members)} × {n // len(members)} | {mean:.1f} ± {se:.1f} |"
        )
    if sft_rows:
        lines += ["", "| SFT model | length-normalised log-likelihood log π_SFT / \\|y\\| (%) ± SE | same, base model (%) |",
                  "|---|---:|---:|"]  # fmt: skip
        for r in sft_rows:
            lines.append(f"| {r['method']} (seed {r['seed']}) | {r['length_normalised_accuracy']:.1f} ± "
                         f"{r['length_normalised_se']:.1f} | {r['base_length_normalised_accuracy']:.1f} |")  # fmt: skip
    return lines


def _last_user_turn(prompt: Any, limit: int = 300) -> str:
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
        text = users[-1] if users else str(prompt[-1].get("content", "")) if prompt else ""
        context = f"({len(prompt)} turns) " if len(prompt) > 1 else ""
    else:
        text, context = str(prompt).rstrip().removesuffix("Assistant:").rsplit("Human:", 1)[-1], ""
    text = " ".join(text.split())
    return context + (text if len(text) <= limit else text[: limit - 1] + "…")


def _quote(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def generations_section(files: Mapping[str, Path], n: int) -> list[str]:
    """The first ``n`` test prompts with every model's answer, one block per prompt (answers cut at 600 chars)."""
    if n <= 0 or not files:
        return []
    answers: dict[str, dict[int, dict[str, Any]]] = {}
    for name, path in files.items():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        answers[name] = {int(r["index"]): r for r in rows}
    first = next(iter(answers.values()))
    lines = []
    for index in sorted(first)[:n]:
        lines += [f"**Prompt {index + 1}** (last user turn): {_quote(_last_user_turn(first[index]['prompt']), 400)}",
                  "", "| model | answer | tokens |", "|---|---|---:|"]  # fmt: skip
        for name, by_index in answers.items():
            row = by_index.get(index)
            if row is not None:
                lines.append(f"| {name} | {_quote(row['response'])} | {row['n_new_tokens']} |")
        lines.append("")
    return lines


def stage_times_table(times: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per stage run (computed or reused), and the total of those computed."""
    lines = ["| stage | key | seconds | this run |", "|---|---|---:|---|"]
    for t in times:
        seconds = "–" if t["seconds"] is None else f"{t['seconds']:.1f}"
        lines.append(f"| {t['stage']} | {t['key'][:10]} | {seconds} | {'computed' if t['computed'] else 'cached'} |")
    computed = sum(t["seconds"] or 0.0 for t in times if t["computed"])
    total = sum(t["seconds"] or 0.0 for t in times)
    lines += ["", f"Stages computed in this run: {computed:.0f} s; all stages as first computed: {total:.0f} s."]
    return lines


def no_gold_sections(
    rows: Sequence[Mapping[str, Any]],
    sft_rows: Sequence[Mapping[str, Any]],
    out: Path,
    *,
    annotated_test: Sequence[Mapping[str, Any]] | None = None,
    generation_files: Mapping[str, Path] | None = None,
    show_generations: int = 0,
) -> list[str]:
    """Markdown lines of the held-out-human sections (plots written into ``out``)."""
    lines = ["## Held-out preference accuracy vs the human labels (no gold model)", "",
             *heldout_table(rows, sft_rows), "",
             "Test pairs are a fixed hash split of the data, kept out of every training stage. A model is right on a "
             "pair when its implicit reward is higher for the response the human chose (ties count as wrong); SE is "
             "binomial over seed × test pair. Aligned policies: β (log π − log π_SFT) against their own SFT model. "
             "SFT models: log π_SFT − log π_base, the log-ratio of the SFT adapter against the model it started "
             "from; the second table gives, for reference, the plain length-normalised log-likelihood."]  # fmt: skip
    results = [r for r in comparisons(rows) if r["metric"] == "heldout"]
    if results:
        lines += ["", "## Paired comparisons of held-out accuracy (seed × test pair, 95 % bootstrap CI)", "",
                  comparison_table(results), "", significance_sentence(results)]  # fmt: skip
    if annotated_test:
        from cwpo.annotation.report import annotator_report
        from cwpo.evaluation.report import plot_agreement_vs_confidence

        report = annotator_report(annotated_test)
        top30 = next(t for t in report["top_n"] if t["percent"] == 30)
        plot = plot_agreement_vs_confidence(report, out / "annotator_test_agreement_vs_confidence.png")
        n, acc = report["n_labelled"], report["accuracy"]
        lines += ["", "## Weak annotator on the held-out test pairs", "",
                  "| pairs | accuracy vs human (%) ± SE | top 30 % most confident: pairs | accuracy (%) ± SE |",
                  "|---:|---:|---:|---:|"]  # fmt: skip
        if acc is not None and top30["accuracy"] is not None:
            se = 100 * (acc * (1 - acc) / n) ** 0.5
            t_acc, t_n = top30["accuracy"], top30["n"]
            t_se = 100 * (t_acc * (1 - t_acc) / t_n) ** 0.5
            lines.append(f"| {n} | {100 * acc:.1f} ± {se:.1f} | {t_n} | {100 * t_acc:.1f} ± {t_se:.1f} |")
        lines += ["", "| confidence decile | pairs | confidence range | accuracy (%) |", "|---:|---:|---|---:|"]
        for b in report["bins"]:
            if b["n"]:
                lines.append(f"| {b['bin']} | {b['n']} | {b['confidence_min']:.3f}–{b['confidence_max']:.3f} | "
                             f"{100 * b['accuracy']:.1f} |")  # fmt: skip
        lines += ["", f"![annotator agreement vs confidence on the test pairs]({plot.name})"]
    generations = generations_section(generation_files or {}, show_generations)
    if generations:
        lines += ["", f"## Generations: the first {show_generations} test prompts, every model", "", *generations]
    return lines
