"""Paired comparisons of methods on the same test prompts, pooled over seeds.

Two methods trained with the same seed answer the same test prompts, so each (seed, prompt) gives one paired
difference: in gold reward (``gold_reward``: reward of a's answer − reward of b's), and in winning against the own
SFT model (``gra``: 100 × [a's answer beats its SFT answer] − 100 × [b's answer beats its SFT answer], so the mean
is the difference in GRA in points), and, on data without a gold model, in held-out preference accuracy
(``heldout``: 100 × [a's implicit reward orders a test pair as the human did] − the same for b, paired by (seed, test
pair)). The estimate is the mean difference over every (seed, prompt); the 95 % CI
is the percentile bootstrap over (seed, prompt) units, and the p-value the two-sided bootstrap test of a zero mean
(``2 × min(P*(d ≤ 0), P*(d ≥ 0))`` on the resamples centred on the null, with the ``+1`` correction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cwpo.errors import DataError

METRICS = ("gra", "gold_reward", "heldout")


def paired_bootstrap(diffs: Sequence[float], *, n_resamples: int = 4000, seed: int = 0) -> dict[str, float]:
    """``{"diff", "ci_low", "ci_high", "p", "n"}`` for the mean of paired differences ``diffs``."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise DataError("a paired comparison needs at least one pair")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    mean = float(d.mean())
    centred = means - mean  # the bootstrap distribution moved to the null hypothesis of a zero mean
    extreme = int(np.sum(np.abs(centred) >= abs(mean)))
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": mean, "ci_low": float(low), "ci_high": float(high),
            "p": min(1.0, (extreme + 1) / (n_resamples + 1)), "n": int(d.size)}  # fmt: skip


def _per_prompt(row: Mapping[str, Any], metric: str) -> list[float] | None:
    values = row.get("per_prompt") or {}
    if metric == "gra":
        return None if "outcome" not in values else [100.0 * (o > 0) for o in values["outcome"]]
    if metric == "heldout":
        return values.get("heldout")
    return values.get("reward")


def compare(rows: Sequence[Mapping[str, Any]], a: str, b: str, metric: str, **kwargs: Any) -> dict[str, Any] | None:
    """Method ``a`` − method ``b`` on ``metric``, paired by (seed, prompt) over the seeds both ran; ``None`` when
    either has no per-prompt values."""
    by_key = {(r["method"], r["seed"]): r for r in rows}
    diffs: list[float] = []
    seeds = sorted({r["seed"] for r in rows if r["method"] == a} & {r["seed"] for r in rows if r["method"] == b})
    for seed in seeds:
        va, vb = _per_prompt(by_key[(a, seed)], metric), _per_prompt(by_key[(b, seed)], metric)
        if va is None or vb is None:
            return None
        if len(va) != len(vb):
            raise DataError(f"{a} and {b} answered different numbers of test prompts on seed {seed}")
        diffs += [x - y for x, y in zip(va, vb, strict=True)]
    if not diffs:
        return None
    return {"a": a, "b": b, "metric": metric, **paired_bootstrap(diffs, **kwargs), "seeds": seeds}


def default_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every method against ``human``, then ``cw-dpo`` against WS-DPO, DPO (c = 1), Human-100 and Top-30."""
    pairs = [(m, "human") for m in methods if m != "human" and "human" in methods]
    if "cw-dpo" in methods:
        pairs += [("cw-dpo", b) for b in ("ws-dpo", "dpo", "human-100", "top-30") if b in methods]
    return list(dict.fromkeys(pairs))


def comparisons(rows: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]] | None = None,
                **kwargs: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Every pair (default :func:`default_pairs`) on every metric with per-prompt values."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for a, b in default_pairs(methods) if pairs is None else pairs:
        for metric in METRICS:
            result = compare(rows, a, b, metric, **kwargs)
            if result is not None:
                out.append(result)
    return out


def significance_sentence(results: Sequence[Mapping[str, Any]], alpha: float = 0.05) -> str:
    """Which differences are significant at ``alpha`` (two-sided), in words."""
    names = {"gra": "GRA", "gold_reward": "mean gold reward", "heldout": "held-out preference accuracy"}
    significant = [r for r in results if r["p"] < alpha]
    if not significant:
        return f"No difference is significant at p < {alpha}."
    parts = [f"{r['a']} {'>' if r['diff'] > 0 else '<'} {r['b']} in {names.get(r['metric'], r['metric'])} "
             f"({r['diff']:+.2f}, p = {r['p']:.3g})" for r in significant]  # fmt: skip
    rest = len(results) - len(significant)
    return (f"Significant at p < {alpha} (two-sided, bootstrap over seed × prompt, no multiple-comparison "
            f"correction): " + "; ".join(parts) + f". The other {rest} differences are not.")  # fmt: skip
