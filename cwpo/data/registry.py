"""Naming a dataset in a config: :class:`DatasetSpec`, the loader registry, and the parts a stage trains on.

A spec is a loader name and its arguments; a bare string is a loader name (``"synthetic"``,
``"harmless-base"``) or the path of a local file. :func:`load_part` turns a spec into one of the parts:

==========  ==========================================================================================
``train``   the source's training split (with ``test_fraction``, or a local file without a test split: all but the
            held-out part)
``test``    the source's test split (or, with ``test_fraction``, the held-out part of the training split: for a
            local file, or a source whose only copy at hand is one split, such as HH-RLHF's test file)
``all``     train and test together (a local file: every row)
``d_l``     the labelled ``split_ratio`` of ``train`` (hash split by ``split_seed``)
``d_u``     the rest of ``train``, the unlabelled set the weak annotator labels
==========  ==========================================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cwpo.data.files import is_data_file
from cwpo.errors import ConfigError

PARTS = ("train", "test", "all", "d_l", "d_u")

# loader name -> (module, function, fixed keyword arguments, train split, test split)
_LOADERS: dict[str, tuple[str, str, dict[str, Any], str | None, str | None]] = {
    "synthetic": ("cwpo.data.synthetic", "load_synthetic", {}, "train", "test"),
    "hh-rlhf": ("cwpo.data.hh_rlhf", "load_hh_rlhf", {"subset": "hh-rlhf"}, "train", "test"),
    "harmless-base": ("cwpo.data.hh_rlhf", "load_hh_rlhf", {"subset": "harmless-base"}, "train", "test"),
    "helpful-base": ("cwpo.data.hh_rlhf", "load_hh_rlhf", {"subset": "helpful-base"}, "train", "test"),
    "helpful-online": ("cwpo.data.hh_rlhf", "load_hh_rlhf", {"subset": "helpful-online"}, "train", "test"),
    "helpful-rejection-sampled": (
        "cwpo.data.hh_rlhf",
        "load_hh_rlhf",
        {"subset": "helpful-rejection-sampled"},
        "train",
        "test",
    ),
    "helpful": ("cwpo.data.hh_rlhf", "load_hh_rlhf", {"subset": "helpful"}, "train", "test"),
    "ultrafeedback": ("cwpo.data.ultrafeedback", "load_ultrafeedback", {}, "train_prefs", "test_prefs"),
    "tldr": ("cwpo.data.tldr", "load_tldr", {}, "train", "validation"),
    "shp": ("cwpo.data.shp", "load_shp", {}, "train", "test"),
    "local": ("cwpo.data.local", "load_local", {}, None, None),
    "trl": ("cwpo.data.trl", "load_trl", {}, "train", "test"),
}
LOADER_NAMES = (*_LOADERS, "mixture")


@dataclass
class DatasetSpec:
    """Which pairs to load.

    Args:
        name: a loader (``synthetic``, ``hh-rlhf``, ``harmless-base``, ``helpful-base``, ``helpful-online``,
            ``helpful-rejection-sampled``, ``helpful``, ``ultrafeedback``, ``tldr``, ``shp``, ``local``, ``trl``
            (any TRL-format preference dataset: ``args: {hub_name: ...}`` or a ``path``), or ``mixture``).
        path: local file or folder (``local``: required; hub loaders: read this instead of the hub).
        args: keyword arguments of the loader (``{"n_pairs": 3000}`` for ``synthetic``, ``{"domains":
            ["askacademia"]}`` for ``shp``, ``{"columns": {...}}`` for ``local``). A ``mixture`` takes
            ``sources`` (a list of specs), ``proportions``, and optionally ``n_pairs`` and ``seed``.
        train_split: the loader's split name used for ``train`` (default per loader: ``train``,
            ``train_prefs`` for UltraFeedback).
        test_split: the split used for ``test`` (``test``, ``test_prefs``, ``validation`` for TL;DR).
        test_path: ``local`` (and ``trl`` with a single file): a separate file for the test part.
        test_fraction: hold out this fraction (by hash of the ids) of the training split as the test part (``local``
            and single-file ``trl`` without ``test_path``; any other loader: its ``train_split`` is split into
            ``train`` and ``test``, and the loader's own test split is not read). Use it when the one file at hand
            must give both parts, e.g. the local HH-RLHF ``harmless-base-test.jsonl.gz`` (read as the training split).
        test_seed: seed of that held-out split.
    """

    name: str
    path: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    train_split: str | None = None
    test_split: str | None = None
    test_path: str | None = None
    test_fraction: float = 0.0
    test_seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in LOADER_NAMES:
            raise ConfigError(f"unknown dataset loader {self.name!r}; known: {list(LOADER_NAMES)}")
        if self.name == "local" and not self.path:
            raise ConfigError("the 'local' loader needs a path")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if not isinstance(self.args, dict):
            raise ConfigError(f"DatasetSpec.args must be a dict, got {type(self.args).__name__}")


def as_dataset_spec(value: DatasetSpec | str | dict) -> DatasetSpec:
    """A spec from a spec, a dict of its fields, a loader name or a local file path."""
    if isinstance(value, DatasetSpec):
        return value
    if isinstance(value, dict):
        return DatasetSpec(**value)
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if text in LOADER_NAMES:
            return DatasetSpec(text)
        if is_data_file(text) or os.path.exists(text):
            return DatasetSpec("local", path=text)
        raise ConfigError(f"{text!r} is neither a dataset loader ({list(LOADER_NAMES)}) nor a data file")
    raise ConfigError(f"cannot build a DatasetSpec from {type(value).__name__}")


def _call_loader(name: str, split: str | None, path: str | None, args: dict[str, Any]):
    import importlib

    module, function, fixed, _, _ = _LOADERS[name]
    loader = getattr(importlib.import_module(module), function)
    kwargs = {**fixed, **args}
    if name == "local":
        _check_arguments(name, loader, path, **kwargs)
        return loader(path, **kwargs)
    if name != "synthetic":
        kwargs["path"] = path
    elif path is not None:
        raise ConfigError("the synthetic loader generates its data; it takes no path")
    _check_arguments(name, loader, split=split, **kwargs)
    return loader(split=split, **kwargs)


def _check_arguments(name: str, function, *args, **kwargs) -> None:
    import inspect

    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as err:  # an unknown or missing keyword in the spec's args
        raise ConfigError(f"bad arguments for the {name!r} loader: {err}") from None


def _one_file(spec: DatasetSpec) -> bool:
    """A spec read from one local file with no splits: its test part is ``test_path`` or a held-out fraction."""
    return spec.name == "local" or (spec.name == "trl" and spec.path is not None and os.path.isfile(spec.path))


def _load_mixture(spec: DatasetSpec, split: str):
    from cwpo.data.splits import mix_sources

    args = dict(spec.args)
    sources = [as_dataset_spec(s) for s in args.pop("sources", [])]
    proportions = args.pop("proportions", None)
    if not sources or proportions is None:
        raise ConfigError("a mixture needs args 'sources' (list of dataset specs) and 'proportions'")
    names = args.pop("names", None) or [s.name if s.name != "local" else os.path.basename(s.path) for s in sources]
    loaded = [load_split(s, split) for s in sources]
    _check_arguments("mixture", mix_sources, loaded, proportions, names=names, **args)
    return mix_sources(loaded, proportions, names=names, **args)


def load_split(spec: DatasetSpec | str | dict, split: str = "train"):
    """The ``train`` or ``test`` split of a spec (loader split names are mapped per loader)."""
    spec = as_dataset_spec(spec)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if spec.name == "mixture":
        return _load_mixture(spec, split)
    if _one_file(spec):
        from cwpo.data.splits import split_holdout

        if split == "test" and spec.test_path:
            return _call_loader(spec.name, None, spec.test_path, spec.args)
        data = _call_loader(spec.name, None, spec.path, spec.args)
        if spec.test_path or spec.test_fraction == 0.0:
            if split == "test":
                raise ConfigError(f"{spec.path} has no test part: set test_path or test_fraction")
            return data
        test, train = split_holdout(data, spec.test_fraction, seed=spec.test_seed)
        return test if split == "test" else train
    _, _, _, train_split, test_split = _LOADERS[spec.name]
    if spec.test_fraction > 0.0:  # both parts from the training split, by hash: the test part never trains
        from cwpo.data.splits import split_holdout

        data = _call_loader(spec.name, spec.train_split or train_split, spec.path, spec.args)
        test, train = split_holdout(data, spec.test_fraction, seed=spec.test_seed)
        return test if split == "test" else train
    loader_split = (spec.train_split or train_split) if split == "train" else (spec.test_split or test_split)
    return _call_loader(spec.name, loader_split, spec.path, spec.args)


def load_all(spec: DatasetSpec | str | dict):
    """Every row of a spec: a local file whole, otherwise train and test concatenated."""
    import datasets

    spec = as_dataset_spec(spec)
    if _one_file(spec) and not spec.test_path:
        return _call_loader(spec.name, None, spec.path, spec.args)
    from cwpo.data.report import FilterReport

    train, test = load_split(spec, "train"), load_split(spec, "test")
    report = (FilterReport.from_dataset(train) or FilterReport()).combine(
        FilterReport.from_dataset(test) or FilterReport()
    )
    return report.attach(datasets.concatenate_datasets([train, test]))


def load_part(
    spec: DatasetSpec | str | dict,
    part: str = "train",
    *,
    split_ratio: float = 0.3,
    split_seed: int = 0,
):
    """One part of a dataset (``train``, ``test``, ``all``, ``d_l``, ``d_u``; see the module docstring)."""
    from cwpo.data.splits import split_labelled

    if part not in PARTS:
        raise ConfigError(f"part must be one of {PARTS}, got {part!r}")
    if part == "all":
        return load_all(spec)
    if part in ("train", "test"):
        return load_split(spec, part)
    d_l, d_u = split_labelled(load_split(spec, "train"), split_ratio, seed=split_seed)
    return d_l if part == "d_l" else d_u
