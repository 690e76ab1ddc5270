"""Reference log-probs computed once, cached on disk, and served to training steps by dataset row index.

``reference="precomputed"`` in ``PolicyModule`` runs no reference forward while training. How the values get
into the steps:

1. At ``on_fit_start`` (after ``configure_model`` and the strategy's setup, before any dataloader is iterated)
   the module asks :func:`cached_reference_logps` for a ``(n, 2)`` table of ``(log π_ref(y_w|x), log
   π_ref(y_l|x))`` per row of the tokenised dataset behind the datamodule's train (and val) dataloader.
2. The table is read from ``<cache_dir>/reference-logps-<key>.safetensors`` when present; ``key`` is
   ``cwpo.io.stable_hash`` of the dataset's content fingerprint (token ids), the model identity
   (``ModelSpec.identity()`` + the init adapter's weights hash), the tokenisation settings, the precision and
   the log-prob implementation. Otherwise it is computed in one pass over the dataset in length-sorted batches
   (longest first: an out-of-memory shows at once) under ``torch.inference_mode`` with the reference (the
   policy with its adapter disabled, i.e. the SFT model), and written atomically (``cwpo.io.atomic_path``).
3. Each step reads ``batch["ref_chosen_logps"]``/``batch["ref_rejected_logps"]`` when the collator provides
   them, else looks them up in the table by ``batch["index"]`` (a device-side gather, no host sync).

The functions only rely on the batch contract (``index`` and the pair keys of docs/ARCHITECTURE.md) and on the
dataloader's ``dataset`` and ``collate_fn``, so a datamodule can also call them itself in ``setup``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cwpo.data.tokenization import arrow_table, dataset_fingerprint
from cwpo.errors import DataError
from cwpo.io import atomic_path, stable_hash

REFERENCE_MODES = ("adapter_disabled", "separate", "precomputed")
"""``adapter_disabled``: the LoRA policy with its adapter off; ``separate``: a second frozen model;
``precomputed``: log-probs cached on disk, no reference forward in training."""

TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")

# Datamodule settings that change batching or speed but never a token id.
_NON_TOKENISATION_HPARAMS = frozenset(
    {"batch_size", "eval_batch_size", "val_batch_size", "num_workers", "pin_memory", "shuffle", "persistent_workers"}
)


# --------------------------------------------------------------------------------------------------------------
# Dataset fingerprint and lengths
# --------------------------------------------------------------------------------------------------------------


def row_lengths(dataset: Any) -> list[int] | None:
    """``len(prompt) + max(len(chosen), len(rejected))`` per row; None when the dataset has no token columns."""
    table = arrow_table(dataset, TOKEN_COLUMNS)
    if table is not None:
        import pyarrow.compute as pc

        prompt, chosen, rejected = (pc.list_value_length(table.column(c)) for c in TOKEN_COLUMNS)
        return pc.add(prompt, pc.max_element_wise(chosen, rejected)).to_pylist()
    try:
        return [len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) for row in dataset]
    except (KeyError, TypeError):
        return None


def length_sorted_loader(loader: DataLoader, batch_size: int | None = None) -> DataLoader:
    """The same dataset and collator, in length-sorted batches (longest first), no shuffling, no workers."""
    dataset = loader.dataset
    size = batch_size or loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 1
    lengths = row_lengths(dataset)
    order = list(range(len(dataset)))
    if lengths is not None:
        order.sort(key=lambda row: -lengths[row])
    batches = [order[start : start + size] for start in range(0, len(order), size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=loader.collate_fn, num_workers=0)


# --------------------------------------------------------------------------------------------------------------
# Tables by row index
# --------------------------------------------------------------------------------------------------------------


def collect_by_index(
    batches: Iterable[dict[str, Any]],
    values_fn: Callable[[dict[str, Any]], torch.Tensor],
    num_rows: int,
    *,
    grad_mode: Callable[[], contextlib.AbstractContextManager] = torch.inference_mode,
) -> torch.Tensor:
    """Run ``values_fn`` on every batch and place its rows at ``batch["index"]``: a ``(num_rows, k)`` float32 table.

    Args:
        batches: pair batches with an ``index`` key (the tokenised dataset's row of each pair). Shape (b,).
        values_fn: batch -> values of its pairs. Shape (b, k).
        num_rows: the dataset's length.
        grad_mode: the autograd context for ``values_fn`` (``torch.inference_mode``; ``torch.no_grad`` where
            inference tensors are unsafe, e.g. DeepSpeed ZeRO-3's gathered parameters).

    Raises:
        DataError: if an index is out of range or some rows never appeared in a batch.
    """
    table: torch.Tensor | None = None
    seen = torch.zeros(num_rows, dtype=torch.bool)
    for batch in batches:
        with grad_mode():
            values = values_fn(batch)
        index = batch["index"].to("cpu", torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_rows):  # offline pass: syncs are fine
            raise DataError(f"batch index out of range for a dataset of {num_rows} rows: {index.tolist()}")
        if table is None:
            table = torch.zeros(num_rows, values.shape[1], dtype=torch.float32)
        table[index] = values.detach().to("cpu", torch.float32)
        seen[index] = True
    if table is None or not bool(seen.all()):
        missing = int((~seen).sum())
        raise DataError(f"{missing} of {num_rows} dataset rows never appeared in a batch; cannot build the table")
    return table


def reference_cache_key(
    *,
    data_fingerprint: str,
    model_identity: dict[str, Any],
    init_adapter: dict[str, Any] | None,
    tokenization: dict[str, Any],
    precision: str,
    logps_impl: str,
) -> str:
    """The cache key of a reference log-prob table: everything that changes its values."""
    return stable_hash(
        {
            "data": data_fingerprint,
            "model": model_identity,
            "init_adapter": init_adapter,
            "tokenization": tokenization,
            "precision": precision,
            "logps_impl": logps_impl,
            "version": 1,
        }
    )


def tokenization_settings(datamodule: Any) -> dict[str, Any]:
    """The datamodule's settings that can change token ids (batching and worker settings left out).

    Its saved hyper-parameters, plus ``tokenize_config``/``tokenizer_spec`` attributes where it has them (cwpo.data's
    datamodules do). The token ids themselves are also part of the key (:func:`dataset_fingerprint`).
    """
    settings = dict(getattr(datamodule, "hparams", {}) or {})
    for attr in ("tokenize_config", "tokenizer_spec"):
        if getattr(datamodule, attr, None) is not None:
            settings[attr] = getattr(datamodule, attr)
    return {key: value for key, value in settings.items() if key not in _NON_TOKENISATION_HPARAMS}


def _load_table(path: Path, num_rows: int) -> torch.Tensor | None:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        table = torch.stack([tensors["chosen_logps"], tensors["rejected_logps"]], dim=1).float()
    except (OSError, KeyError, RuntimeError, ValueError):
        return None
    return table if table.shape[0] == num_rows else None


def _save_table(path: Path, table: torch.Tensor, material: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {"chosen_logps": table[:, 0].contiguous(), "rejected_logps": table[:, 1].contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"cwpo": json.dumps(material, sort_keys=True, default=str)})


def cached_reference_logps(
    loader: DataLoader,
    reference_fn: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]],
    *,
    cache_dir: str | Path,
    model_identity: dict[str, Any],
    init_adapter: dict[str, Any] | None = None,
    tokenization: dict[str, Any] | None = None,
    precision: str = "32-true",
    logps_impl: str = "logits",
    batch_size: int | None = None,
    move_batch: Callable[[dict[str, Any]], dict[str, Any]] = lambda batch: batch,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    grad_mode: Callable[[], contextlib.AbstractContextManager] = torch.inference_mode,
    is_global_zero: bool = True,
    broadcast: Callable[[Any], Any] = lambda value: value,
    barrier: Callable[[], None] = lambda: None,
    may_compute: bool = True,
) -> torch.Tensor:
    """The ``(n, 2)`` reference log-prob table of ``loader.dataset``, from the disk cache or computed once.

    Every rank calls this. Whether the cache is hit is decided on rank 0 and broadcast, so under ZeRO-3 all ranks
    either read or run the (collective) forward passes together; rank 0 writes the file.

    Args:
        loader: a dataloader over the tokenised pair dataset (its ``dataset`` and ``collate_fn`` are reused).
        reference_fn: batch -> ``(ref_chosen_logps, ref_rejected_logps)``, shapes (b,), (b,).
        cache_dir: folder of the cache files.
        model_identity, init_adapter, tokenization, precision, logps_impl: parts of the cache key.
        batch_size: batch size of the pass (default: the loader's).
        move_batch: puts a batch on the model's device.
        forward_context: the precision context of training forwards (autocast), so values match training.
        grad_mode: ``torch.inference_mode`` (default) or ``torch.no_grad``.
        is_global_zero, broadcast, barrier: the strategy's rank-0 flag and collectives.
        may_compute: ``False`` turns a cache miss into an error (e.g. a resumed full fine-tune, whose weights are
            no longer the reference).

    Returns:
        float32 CPU tensor, column 0 chosen, column 1 rejected. Shape (n, 2).
    """
    dataset = loader.dataset
    num_rows = len(dataset)
    material = {
        "data": dataset_fingerprint(dataset, TOKEN_COLUMNS),
        "model": model_identity,
        "init_adapter": init_adapter,
        "tokenization": tokenization or {},
        "precision": precision,
        "logps_impl": logps_impl,
    }
    key = reference_cache_key(
        data_fingerprint=material["data"],
        model_identity=model_identity,
        init_adapter=init_adapter,
        tokenization=material["tokenization"],
        precision=precision,
        logps_impl=logps_impl,
    )
    path = Path(cache_dir) / f"reference-logps-{key}.safetensors"
    table = _load_table(path, num_rows) if is_global_zero else None
    if broadcast(table is not None):
        return table if table is not None else _wait_for_table(path, num_rows)
    if not may_compute:
        raise DataError(f"no cached reference log-probs at {path}, and the current weights are not the reference")

    def values(batch: dict[str, Any]) -> torch.Tensor:
        with forward_context():
            chosen, rejected = reference_fn(move_batch(batch))
        return torch.stack([chosen, rejected], dim=1)

    table = collect_by_index(length_sorted_loader(loader, batch_size), values, num_rows, grad_mode=grad_mode)
    if is_global_zero:
        _save_table(path, table, {"key": key, **material})
    barrier()
    return table


def _wait_for_table(path: Path, num_rows: int) -> torch.Tensor:
    table = _load_table(path, num_rows)
    if table is None:
        raise DataError(f"{path}: rank 0 found a reference log-prob cache this rank cannot read")
    return table
