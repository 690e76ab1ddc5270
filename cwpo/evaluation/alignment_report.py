"""The sections of the report that say what alignment did: per method, its answers against its own SFT model's
(wins / ties / losses, GRA, mean gold reward ± SE, lengths, EOS rate), how its training labels agree with gold and
with the human labels, paired comparisons between methods with bootstrap CIs and p-values
(:mod:`cwpo.evaluation.comparisons`), plots with confidence intervals, and a diagnosis of the weak labels
(agreement with gold by confidence bin, effective sample size of the weights, chosen / rejected lengths).

Rows are the pipeline's (:meth:`cwpo.pipeline.experiment.Experiment.run`): ``method`` (name), ``seed``, ``wins``,
``ties``, ``losses``, ``n`` and, when the judge scores answers, ``per_prompt`` values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cwpo.evaluation.comparisons import comparisons, significance_sentence
from cwpo.evaluation.metrics import mean_se
from cwpo.io import write_figure

Z95 = 1.959964


def _pooled(members: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [v for r in members for v in (r.get("per_prompt") or {}).get(key, [])]


def _avg(members, key) -> float | None:
    values = [float(r[key]) for r in members if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def method_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per method, pooled over its seeds (prompts of every seed counted once each)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        members = [r for r in rows if r["method"] == method]
        n = sum(r["n"] for r in members)
        wins, ties, losses = (sum(r[k] for r in members) for k in ("wins", "ties", "losses"))
        gra = 100.0 * wins / n
        entry: dict[str, Any] = {
            "method": method, "seeds": len(members), "n": n, "wins": wins, "ties": ties, "losses": losses,
            "gra": gra, "gra_se": 100.0 * math.sqrt(gra / 100 * (1 - gra / 100) / n),
            "mean_length": _avg(members, "mean_length"), "sft_mean_length": _avg(members, "sft_mean_length"),
            "eos_rate": _avg(members, "eos_rate"), "sft_eos_rate": _avg(members, "sft_eos_rate"),
        }  # fmt: skip
        for key in ("label_gold_agreement", "label_human_agreement", "label_ess", "label_pairs",
                    "heldout_gold_accuracy"):  # fmt: skip
            entry[key] = _avg(members, key)
        rewards, sft_rewards = _pooled(members, "reward"), _pooled(members, "sft_reward")
        if rewards and len(rewards) == len(sft_rewards):
            entry["mean_gold_reward"], entry["gold_reward_se"] = mean_se(rewards)
            entry["sft_mean_gold_reward"], entry["sft_gold_reward_se"] = mean_se(sft_rewards)
            entry["gold_gain"], entry["gold_gain_se"] = mean_se(
                [a - b for a, b in zip(rewards, sft_rewards, strict=True)]
            )
        out.append(entry)
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, se: float | None = None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if se is None else f"{value:.{digits}f} ± {se:.{digits}f}"


def summary_table(summary: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| method | seeds × prompts | wins / ties / losses vs SFT (%) | GRA ± SE | SFT gold | aligned gold | "
        "gain ± SE | length SFT → aligned | EOS (%) | held-out acc. vs gold (%) | labels vs gold (%) | "
        "labels vs human (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        n = s["n"]
        wtl = " / ".join(f"{100 * s[k] / n:.1f}" for k in ("wins", "ties", "losses"))
        lines.append(
            f"| {s['method']} | {s['seeds']} × {n // max(s['seeds'], 1)} | {wtl} | {s['gra']:.1f} ± {s['gra_se']:.1f} "
            f"| {_num(s.get('sft_mean_gold_reward'), s.get('sft_gold_reward_se'))} "
            f"| {_num(s.get('mean_gold_reward'), s.get('gold_reward_se'))} "
            f"| {_num(s.get('gold_gain'), s.get('gold_gain_se'))} "
            f"| {_num(s['sft_mean_length'], digits=1)} → {_num(s['mean_length'], digits=1)} | {_pct(s['eos_rate'])} "
            f"| {_num(s.get('heldout_gold_accuracy'), digits=1)} "
            f"| {_pct(s['label_gold_agreement'])} | {_pct(s['label_human_agreement'])} |"
        )
    return "\n".join(lines)


def comparison_table(results: Sequence[Mapping[str, Any]]) -> str:
    names = {"gra": "GRA (points)", "gold_reward": "mean gold reward", "heldout": "held-out acc. vs human (points)"}
    lines = ["| a − b | metric | diff | 95 % CI | p | pairs |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['a']} − {r['b']} | {names.get(r['metric'], r['metric'])} | {r['diff']:+.2f} "
                     f"| [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['p']:.3g} | {r['n']} |")  # fmt: skip
    return "\n".join(lines)


def plot_gain(summary: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Mean gold-reward gain over the own SFT model per method, with 95 % CIs (pooled prompts)."""
    from matplotlib.figure import Figure

    entries = [s for s in summary if s.get("gold_gain") is not None]
    if not entries:
        return None
    figure = Figure(figsize=(max(5.0, 0.8 * len(entries) + 2), 3.8))
    left, right = figure.subplots(1, 2)
    xs = range(len(entries))
    left.bar(xs, [s["gold_gain"] for s in entries], yerr=[Z95 * s["gold_gain_se"] for s in entries], capsize=3)
    left.axhline(0, color="grey", linewidth=1)
    left.set(ylabel="gold reward − SFT's (95 % CI)", title="Gain over the own SFT model")
    stacked = [(100 * s["wins"] / s["n"], 100 * s["ties"] / s["n"], 100 * s["losses"] / s["n"]) for s in entries]
    bottom = [0.0] * len(entries)
    for k, (label, colour) in enumerate((("wins", "tab:green"), ("ties", "lightgrey"), ("losses", "tab:red"))):
        heights = [v[k] for v in stacked]
        right.bar(xs, heights, bottom=bottom, color=colour, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    right.set(ylabel="% of test prompts", title="Against the own SFT answer", ylim=(0, 100))
    right.legend(fontsize="small", loc="lower right")
    for axis in (left, right):
        axis.set_xticks(list(xs))
        axis.set_xticklabels([s["method"] for s in entries], rotation=30, ha="right", fontsize="small")
    figure.tight_layout()
    return write_figure(path, figure)


def plot_comparisons(results: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Paired differences in mean gold reward with their 95 % bootstrap CIs."""
    from matplotlib.figure import Figure

    entries = [r for r in results if r["metric"] == "gold_reward"]
    if not entries:
        return None
    figure = Figure(figsize=(6.0, 0.4 * len(entries) + 1.5))
    axis = figure.subplots()
    ys = list(range(len(entries)))[::-1]
    diffs = [r["diff"] for r in entries]
    errors = [[r["diff"] - r["ci_low"] for r in entries], [r["ci_high"] - r["diff"] for r in entries]]
    axis.errorbar(diffs, ys, xerr=errors, fmt="o", capsize=3)
    axis.axvline(0, color="grey", linewidth=1)
    axis.set_yticks(ys)
    axis.set_yticklabels([f"{r['a']} − {r['b']}" for r in entries], fontsize="small")
    axis.set(xlabel="difference in mean gold reward (95 % bootstrap CI)", title="Paired by seed × prompt")
    figure.tight_layout()
    return write_figure(path, figure)


def diagnosis(records: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], bins: int = 5) -> list[str]:
    """Markdown lines: weak-label agreement with gold and human by confidence bin, the weights' effective sample
    size, and the lengths of chosen and rejected responses under weak and human labels."""
    rows = [r for r in records if r.get("gold_reward_chosen") is not None and r.get("confidence") is not None]
    if not rows:
        return []
    import re

    words = re.compile(r"[a-z]+")
    ranked = sorted(rows, key=lambda r: float(r["confidence"]))
    lines = ["| confidence bin | pairs | mean c | weak vs gold (%) | weak vs human (%) | human vs gold (%) |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for b in range(bins):
        part = ranked[b * len(ranked) // bins : (b + 1) * len(ranked) // bins]
        if not part:
            continue
        gold = sum(r["gold_reward_chosen"] > r["gold_reward_rejected"] for r in part) / len(part)
        human = sum(r.get("human_label", 1) == 1 for r in part) / len(part)
        # the human label agrees with gold when weak and human agree and weak is right, or both disagree
        human_gold = sum((r["gold_reward_chosen"] > r["gold_reward_rejected"]) == (r.get("human_label", 1) == 1)
                         for r in part) / len(part)  # fmt: skip
        mean_c = sum(float(r["confidence"]) for r in part) / len(part)
        lines.append(f"| {b + 1} of {bins} (lowest first) | {len(part)} | {mean_c:.2f} | {100 * gold:.1f} "
                     f"| {100 * human:.1f} | {100 * human_gold:.1f} |")  # fmt: skip
    weights = [float(r["confidence"]) for r in rows]
    ess = sum(weights) ** 2 / max(sum(w * w for w in weights), 1e-12)

    def length(text) -> int:
        return len(words.findall(str(text).lower()))

    def repeats(text) -> int:  # repeated non-filler words: what the gold reward's repeat penalty counts
        from cwpo.data.synthetic import FILLER

        found = [w for w in words.findall(str(text).lower()) if w not in FILLER]
        return len(found) - len(set(found))

    def mean(values) -> float:
        return sum(values) / max(len(values), 1)

    human_first = [r.get("human_label", 1) == 1 for r in rows]
    gold_first = [r["gold_reward_chosen"] > r["gold_reward_rejected"] for r in rows]
    weak_first = [True] * len(rows)  # labelled rows are in the weak annotator's order

    def sides(order, fn) -> str:
        chosen = mean([fn(r["chosen"] if o else r["rejected"]) for r, o in zip(rows, order, strict=True)])
        rejected = mean([fn(r["rejected"] if o else r["chosen"]) for r, o in zip(rows, order, strict=True)])
        return f"{chosen:.2f} | {rejected:.2f}"

    wrong = [not g for g in gold_first]  # pairs the weak annotator orders against gold
    wrong_rows = [r for r, w in zip(rows, wrong, strict=True) if w]
    human_wrong = [r for r, h, g in zip(rows, human_first, gold_first, strict=True) if h != g]
    lines += [
        "",
        f"Effective sample size of the confidence weights, (Σc)² / Σc²: {ess:.0f} of {len(rows)} pairs "
        f"({100 * ess / len(rows):.0f} %).",
        "",
        "| labels | chosen (words) | rejected (words) | chosen (repeats) | rejected (repeats) |",
        "|---|---:|---:|---:|---:|",
        f"| weak annotator | {sides(weak_first, length)} | {sides(weak_first, repeats)} |",
        f"| human | {sides(human_first, length)} | {sides(human_first, repeats)} |",
        f"| gold order | {sides(gold_first, length)} | {sides(gold_first, repeats)} |",
    ]
    if wrong_rows and human_wrong:
        # the label errors: what the wrongly preferred response has more of than the gold-preferred one
        def gap(part, fn, flip=False) -> float:
            return mean([fn(r["rejected"] if flip else r["chosen"]) - fn(r["chosen"] if flip else r["rejected"])
                         for r in part])  # fmt: skip

        hw_flip = [r.get("human_label", 1) != 1 for r in human_wrong]
        human_len = mean([(length(r["rejected"]) - length(r["chosen"])) if f else (length(r["chosen"]) -
                          length(r["rejected"])) for r, f in zip(human_wrong, hw_flip, strict=True)])  # fmt: skip
        human_rep = mean([(repeats(r["rejected"]) - repeats(r["chosen"])) if f else (repeats(r["chosen"]) -
                          repeats(r["rejected"])) for r, f in zip(human_wrong, hw_flip, strict=True)])  # fmt: skip
        lines += ["", "On the pairs a label orders against gold, the wrongly preferred response minus the other: "
                  f"weak labels ({len(wrong_rows)} pairs) {gap(wrong_rows, length):+.2f} words and "
                  f"{gap(wrong_rows, repeats):+.2f} repeats; human labels ({len(human_wrong)} pairs) "
                  f"{human_len:+.2f} words and {human_rep:+.2f} repeats. Mean gold margin |Δr*| of those errors: "
                  f"weak {mean([abs(r['gold_reward_chosen'] - r['gold_reward_rejected']) for r in wrong_rows]):.2f}, "
                  f"human {mean([abs(r['gold_reward_chosen'] - r['gold_reward_rejected']) for r in human_wrong]):.2f} "
                  f"(all pairs {mean([abs(r['gold_reward_chosen'] - r['gold_reward_rejected']) for r in rows]):.2f})."]  # fmt: skip
    ess_rows = [s for s in summary if s.get("label_ess") is not None]
    if ess_rows:
        lines += ["", "| method | training pairs | effective pairs (weights) | labels vs gold (weighted, %) |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for s in ess_rows:
            lines.append(f"| {s['method']} | {s['label_pairs']:.0f} | {s['label_ess']:.0f} "
                         f"| {_pct(s['label_gold_agreement'])} |")  # fmt: skip
    return lines


def alignment_sections(rows: Sequence[Mapping[str, Any]], out: Path, annotated: Sequence[Mapping[str, Any]] | None):
    """``(markdown lines, {name: png path}, method summary, comparisons)`` for rows with wins / ties / losses."""
    summary = method_summary(rows)
    results = comparisons(rows)
    plots: dict[str, Path] = {}
    lines = ["## Against the own SFT model (pooled over seeds)", "", summary_table(summary), "",
             "Wins / ties / losses: the aligned answer's gold reward is higher / equal / lower than the SFT model's "
             "answer to the same prompt. SE of gold rewards over seed × prompt; GRA's SE is binomial. Labels vs "
             "gold / human: agreement of the pairs the method trains on, each weighted as the method weights it. "
             "EOS: the answer ended before the token limit."]  # fmt: skip
    gain = plot_gain(summary, out / "gain_by_method.png")
    if gain is not None:
        plots["gain_plot"] = gain
        lines += ["", f"![gain over SFT by method]({gain.name})"]
    if results:
        lines += ["", "## Paired comparisons (seed × prompt, 95 % bootstrap CI)", "", comparison_table(results), "",
                  significance_sentence(results)]  # fmt: skip
        plot = plot_comparisons(results, out / "comparisons.png")
        if plot is not None:
            plots["comparisons_plot"] = plot
            lines += ["", f"![paired comparisons]({plot.name})"]
        by = {(r["a"], r["b"], r["metric"]): r for r in results}
        beaten = [b for b in ("human", "ws-dpo") if (c := by.get(("cw-dpo", b, "gold_reward"))) is not None
                  and not (c["p"] < 0.05 and c["diff"] > 0)]  # fmt: skip
        if beaten:
            lines += ["", f"CW-DPO does not significantly beat {' or '.join(beaten)} in mean gold reward; the "
                      "diagnosis below shows the labels it trained on."]  # fmt: skip
    if annotated:
        extra = diagnosis(annotated, summary)
        if extra:
            lines += ["", "## Diagnosis: the weak labels", "", *extra]
    return lines, plots, summary, results
