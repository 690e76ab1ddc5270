"""WS-DPO's labels (Tao & Li, Eq. 17 of CW-PO): the weak DPO policy's implicit reward orders D_U.

``r(x, y) = β (log π_weak(y|x) − log π_weak_ref(y|x))``; the higher-reward response becomes ``chosen`` and the
confidence comes from the reward margin, written with the same columns as the BT annotator's output
(:func:`cwpo.annotation.labels.label_pairs`), so every later stage treats both alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cwpo.models import ModelSpec


def logps_table(model, datamodule, *, impl: str = "logits", bf16: bool = False, batch_size: int = 64) -> torch.Tensor:
    """``(n, 4)`` of each pair of the datamodule's training part, in row order: summed response log-probs of
    (chosen, rejected) under ``model``, then their response token counts (float32). ``bf16``: CPU bf16 autocast."""
    from cwpo.modules.policy import pair_logps
    from cwpo.modules.reference import collect_by_index, length_sorted_loader

    loader = length_sorted_loader(datamodule.train_dataloader(), batch_size=batch_size)

    def values(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = pair_logps(model, batch, impl=impl)
        parts = (out.chosen_logps, out.rejected_logps, out.chosen_counts, out.rejected_counts)
        return torch.stack([p.float() for p in parts], dim=1)

    return collect_by_index(loader, values, len(loader.dataset))


def label_by_implicit_reward(
    reference: tuple[ModelSpec, str | None],
    policy_dir: str | Path,
    datamodule,
    out_dir: str | Path,
    *,
    beta: float,
    confidence: str = "cw",
) -> dict[str, Any]:
    """Label the datamodule's training part by the weak policy's implicit reward; write ``d_u_labelled.jsonl``.

    Args:
        reference: ``(spec, init_adapter)`` of the weak reference (the weak SFT model).
        policy_dir: the weak DPO policy: a full model folder, or an adapter folder on top of ``reference``.
        datamodule: a :class:`cwpo.data.PairDataModule` over D_U (not shuffled).
        out_dir: where the labelled pairs and the agreement report go.
        beta: the weak policy's β (the reward's scale, so the confidence scheme sees real margins).
        confidence: confidence scheme of the margins (default Eq. 8).
    """
    from datasets import Dataset

    from cwpo.annotation.labels import label_pairs
    from cwpo.annotation.report import write_report
    from cwpo.data.files import save_pairs
    from cwpo.modules.causal_lm import build_causal_lm, merge_adapter

    spec, init_adapter = reference
    policy_dir = Path(policy_dir)
    datamodule.setup("fit")
    ref_model = build_causal_lm(spec, init_adapter=init_adapter, trainable=False)
    ref = logps_table(ref_model, datamodule)[:, :2]
    del ref_model
    if (policy_dir / "adapter_config.json").exists():
        policy_model = merge_adapter(build_causal_lm(spec, init_adapter=init_adapter, trainable=False), str(policy_dir))
    else:
        policy_model = build_causal_lm(ModelSpec(str(policy_dir)), trainable=False)
    policy = logps_table(policy_model, datamodule)[:, :2]
    rewards = beta * (policy - ref)

    dataset = datamodule.train_dataset
    keep = [c for c in dataset.column_names if not c.endswith("_ids") and c not in ("index",)]
    records = [{k: row[k] for k in keep} for row in dataset]
    labelled = label_pairs(records, [(float(a), float(b)) for a, b in rewards.tolist()], confidence=confidence)
    out_dir = Path(out_dir)
    save_pairs(Dataset.from_list(labelled), out_dir / "d_u_labelled.jsonl")
    report = write_report(labelled, out_dir, title="WS-DPO weak policy (implicit reward)")
    return {"n_pairs": len(labelled), "agreement": report.get("accuracy")}
