"""Splits: D_L / D_U, held-out parts, and the robustness builders of appendix J.8 (mixtures, flipped labels).

Every split ranks rows by a SHA-256 hash of ``(salt, seed, id)`` and cuts the ranking at
``round(fraction * n)``: exact sizes, the same result on any machine and in any process, and a row's side
depends on its id, not on where it sits in the file. Both parts keep the input's row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cwpo.data._progress import quiet_datasets
from cwpo.data.report import FilterReport
from cwpo.data.schema import PAIRED_COLUMNS
from cwpo.errors import ConfigError, DataError

FLIP_STRATEGIES = ("random", "largest_margin")


def _rank_key(salt: str, seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{salt}\x1f{seed}\x1f{key}".encode()).digest()


def _keys(dataset) -> list[str]:
    if "id" in dataset.column_names:
        return [str(i) for i in dataset["id"]]
    return [str(i) for i in range(len(dataset))]


def hash_order(dataset, *, seed: int, salt: str) -> list[int]:
    """Row indices of ``dataset`` ranked by the hash of ``(salt, seed, id)``."""
    keys = _keys(dataset)
    return sorted(range(len(keys)), key=lambda i: _rank_key(salt, seed, keys[i]))


def hash_split(dataset, fraction: float, *, seed: int = 0, salt: str = "split"):
    """Split into ``(first, rest)`` with ``round(fraction * n)`` rows in ``first``, chosen by hash.

    Raises:
        ConfigError: ``fraction`` is not in [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"split fraction must be in [0, 1], got {fraction}")
    order = hash_order(dataset, seed=seed, salt=salt)
    n_first = round(fraction * len(order))
    first, rest = dataset.select(sorted(order[:n_first])), dataset.select(sorted(order[n_first:]))
    source = FilterReport.from_dataset(dataset) or FilterReport(n_read=len(dataset), n_kept=len(dataset))
    for part, other in ((first, rest), (rest, first)):
        report = FilterReport.from_dict(source.to_dict())
        report.n_kept = len(part)
        report.note(f"split_off_{salt}", len(other))  # rows of the other side: not drops
        report.attach(part)
    return first, rest


def _check_sides(source, first, rest, names: tuple[str, str], fraction: float) -> None:
    """A clear error when a split leaves one side empty, naming the data it came from (file, counts)."""
    for part, name in ((first, names[0]), (rest, names[1])):
        if len(part) == 0:
            report = FilterReport.from_dataset(source)
            origin = f"; data: {report.summary()}" if report is not None else ""
            raise DataError(
                f"the {name} split is empty: {len(source)} rows at fraction {fraction} put {len(first)} in "
                f"{names[0]} and {len(rest)} in {names[1]}; both need at least one row (more data or another "
                f"fraction){origin}"
            )


def split_labelled(dataset, ratio: float = 0.3, *, seed: int = 0):
    """The training split as ``(D_L, D_U)``: ``round(ratio * n)`` labelled pairs, the rest unlabelled.

    Raises:
        ConfigError: ``ratio`` is not in (0, 1).
        DataError: either part would be empty.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"the D_L ratio must be in (0, 1), got {ratio}")
    d_l, d_u = hash_split(dataset, ratio, seed=seed, salt="d_l")
    _check_sides(dataset, d_l, d_u, ("D_L", "D_U"), ratio)
    return d_l, d_u


def split_holdout(dataset, fraction: float, *, seed: int = 0):
    """``(held_out, rest)``: a held-out part (validation, or a test split for sources without one).

    Raises:
        ConfigError: ``fraction`` is not in (0, 1).
        DataError: either part would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the held-out fraction must be in (0, 1), got {fraction}")
    held, rest = hash_split(dataset, fraction, seed=seed, salt="holdout")
    _check_sides(dataset, held, rest, ("held-out", "remaining"), fraction)
    return held, rest


def mix_sources(
    datasets: Sequence,
    proportions: Sequence[float],
    *,
    n_pairs: int | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
):
    """An imbalanced mixture of sources (appendix J.8), e.g. 80 % harmless + 20 % helpful.

    Args:
        datasets: the sources.
        proportions: their shares (normalised to sum to 1).
        n_pairs: size of the mixture; default the largest the sources allow at these shares.
        seed: which rows each source contributes (hash-ranked).
        names: written to the ``source`` column (default: each dataset's own ``source`` column, else
            ``"source-<i>"``). When ids repeat across sources, every id becomes ``"<name>/<id>"``.

    Returns:
        The concatenation of the selected rows (columns: those all sources share), with a ``source`` column.

    Raises:
        ConfigError: lengths disagree, a share is negative, or a source is too small for its share.
    """
    import datasets as hf_datasets

    if len(datasets) != len(proportions) or not datasets:
        raise ConfigError("mix_sources needs one proportion per dataset (and at least one dataset)")
    if any(p < 0 for p in proportions) or sum(proportions) <= 0:
        raise ConfigError(f"proportions must be >= 0 with a positive sum, got {list(proportions)}")
    if names is not None and len(names) != len(datasets):
        raise ConfigError("mix_sources needs one name per dataset")
    shares = [p / sum(proportions) for p in proportions]
    if n_pairs is None:
        n_pairs = int(min(len(d) / s for d, s in zip(datasets, shares, strict=True) if s > 0))
    counts = [int(round(s * n_pairs)) for s in shares]
    counts[max(range(len(counts)), key=lambda i: shares[i])] += n_pairs - sum(counts)
    common = [c for c in datasets[0].column_names if all(c in d.column_names for d in datasets)]
    parts = []
    report = FilterReport(stage="mixture")
    for i, (dataset, count) in enumerate(zip(datasets, counts, strict=True)):
        if count > len(dataset):
            raise ConfigError(f"source {i} has {len(dataset)} pairs, fewer than the {count} its share needs")
        picked = dataset.select(sorted(hash_order(dataset, seed=seed, salt=f"mix-{i}")[:count]))
        picked = picked.select_columns(common)
        if names is not None or "source" not in common:
            name = names[i] if names is not None else f"source-{i}"
            with quiet_datasets():
                if "source" in picked.column_names:
                    picked = picked.remove_columns("source")
                picked = picked.add_column("source", [name] * len(picked))
        parts.append(picked)
        source_report = FilterReport.from_dataset(dataset) or FilterReport(n_read=len(dataset), n_kept=len(dataset))
        report = report.combine(source_report)
    ids = [i for part in parts if "id" in part.column_names for i in part["id"]]
    if len(set(ids)) != len(ids):  # sources with overlapping ids (two seeds of one loader): prefix the source
        with quiet_datasets():
            parts = [
                _prefix_ids(part, names[i] if names is not None else f"source-{i}") for i, part in enumerate(parts)
            ]
    with quiet_datasets():
        mixture = hf_datasets.concatenate_datasets(parts)
    report.n_kept = len(mixture)
    report.note("not_sampled", report.n_read - report.n_dropped - len(mixture))
    return report.attach(mixture)


def _prefix_ids(dataset, prefix: str):
    new_ids = [f"{prefix}/{i}" for i in dataset["id"]]
    order = dataset.column_names
    return dataset.remove_columns("id").add_column("id", new_ids).select_columns(order)


def flip_labels(dataset, rate: float, *, seed: int = 0, strategy: str = "random", margin_columns=None):
    """Corrupt the labels of ``round(rate * n)`` pairs by swapping chosen and rejected (appendix J.8).

    The flipped pairs get ``label_flipped = True``. ``human_label`` is left as it is: the corrupted labels are
    now what the "human" said, as in a real noisy labelling; ``label_flipped`` records the truth.

    Args:
        rate: fraction of pairs to flip, in [0, 1].
        seed: which pairs (``random``), by hash.
        strategy: ``"random"``, or ``"largest_margin"``: flip the pairs whose chosen is most clearly better
            (the most damaging flips), by ``margin_columns``.
        margin_columns: ``(better, worse)`` score columns for ``largest_margin``; default the gold rewards,
            else the weak scores.
    """
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"flip rate must be in [0, 1], got {rate}")
    if strategy not in FLIP_STRATEGIES:
        raise ConfigError(f"flip strategy must be one of {FLIP_STRATEGIES}, got {strategy!r}")
    n_flip = round(rate * len(dataset))
    if strategy == "random":
        flipped = set(hash_order(dataset, seed=seed, salt="flip")[:n_flip])
    else:
        if margin_columns is None:
            for candidate in (
                ("gold_reward_chosen", "gold_reward_rejected"),
                ("weak_score_chosen", "weak_score_rejected"),
            ):
                if all(c in dataset.column_names for c in candidate):
                    margin_columns = candidate
                    break
        if margin_columns is None or not all(c in dataset.column_names for c in margin_columns):
            raise ConfigError("largest_margin flips need score columns (gold_reward_* or weak_score_*)")
        margins = [a - b for a, b in zip(dataset[margin_columns[0]], dataset[margin_columns[1]], strict=True)]
        flipped = set(sorted(range(len(margins)), key=lambda i: (-margins[i], i))[:n_flip])
    swaps = [(a, b) for a, b in PAIRED_COLUMNS if a in dataset.column_names and b in dataset.column_names]

    order = dataset.column_names
    with quiet_datasets():
        result = _swap_columns(dataset, flipped, swaps, order)
    report = FilterReport.from_dataset(dataset) or FilterReport(n_read=len(dataset), n_kept=len(dataset))
    report.note("label_flipped", n_flip)
    return report.attach(result)


def _swap_columns(dataset, flipped: set[int], swaps, order: list[str]):
    result = dataset
    for a, b in swaps:
        values_a, values_b = dataset[a], dataset[b]
        new_a = [values_b[i] if i in flipped else values_a[i] for i in range(len(values_a))]
        new_b = [values_a[i] if i in flipped else values_b[i] for i in range(len(values_b))]
        result = result.remove_columns([a, b])
        result = result.add_column(a, new_a, feature=dataset.features[a])
        result = result.add_column(b, new_b, feature=dataset.features[b])
    if "label_flipped" in result.column_names:
        result = result.remove_columns("label_flipped")
    result = result.add_column("label_flipped", [i in flipped for i in range(len(dataset))])
    return result.select_columns([c for c in order if c != "label_flipped"] + ["label_flipped"])
