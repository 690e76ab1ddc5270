"""Saving what SFT and policy training produce: LoRA adapters in PEFT format (ZeRO-3 safe), merged models.

An exported adapter folder holds ``adapter_model.safetensors``, ``adapter_config.json`` (PEFT reads both:
``PeftModel.from_pretrained(base, folder)``), ``README.md`` (a model card) and ``cwpo_backbone.json`` (the base
model's ``ModelSpec`` and init adapter, so ``merge`` below can rebuild the base without being told).

Under DeepSpeed ZeRO-3 every rank holds only a shard of each parameter; saving ``state_dict()`` there writes
empty tensors (a known failure of naive PEFT saving). :func:`adapter_state_dict` gathers the LoRA parameters
with ``deepspeed.zero.GatheredParameters`` first, on every rank (a collective), and :func:`check_adapter_file`
refuses an adapter with no tensors or a zero-sized one.

Merged export (``merge_and_unload`` + ``save_pretrained``) rebuilds the base on the CPU from its spec and merges
the saved adapter into it, so it works the same after a ZeRO-3 run and never needs a second copy on the GPU:

    python -m cwpo.modules.export merge runs/policy/adapter runs/policy/merged
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cwpo.errors import ConfigError
from cwpo.io import atomic_path, file_hash, plain_data
from cwpo.models import ModelSpec, as_model_spec
from cwpo.modules.causal_lm import ADAPTER_WEIGHTS, check_adapter_file, gathered_params, is_zero3_model, merge_adapter

BACKBONE_FILE = "cwpo_backbone.json"
MODEL_CARD = "README.md"


def adapter_identity(adapter_dir: str | None) -> dict[str, Any] | None:
    """What decides an adapter's effect, for cache keys: its folder and the hash of its weights."""
    if not adapter_dir:
        return None
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    return {"path": str(adapter_dir), "weights": file_hash(path) if path.is_file() else None}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The active adapter's weights, PEFT-keyed, as full CPU tensors (gathered first under ZeRO-3).

    Every rank must call this under ZeRO-3 (the gather is a collective).
    """
    from peft import get_peft_model_state_dict

    adapter_params = [p for name, p in model.named_parameters() if "lora_" in name]
    with gathered_params(adapter_params):
        state = get_peft_model_state_dict(model)
        return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


def model_card(*, title: str, backbone: ModelSpec, init_adapter: str | None, hparams: dict[str, Any]) -> str:
    """A short model card (Hugging Face README with YAML front matter) describing how the weights were trained."""
    settings = "\n".join(
        f"- `{key}`: `{plain_data(value)}`" for key, value in sorted(hparams.items()) if key != "backbone"
    )
    return (
        "---\n"
        "library_name: peft\n"
        f"base_model: {backbone.name_or_path}\n"
        "tags: [cwpo, lora, preference-optimization]\n"
        "---\n\n"
        f"# {title}\n\n"
        "Trained with cwpo (Confidence-Weighted Preference Optimization: a weak annotator labels preference pairs "
        "with a confidence c; the strong model is aligned with c-weighted DPO/IPO/rDPO).\n\n"
        f"- base model: `{backbone.name_or_path}` (spec: `{json.dumps(plain_data(backbone.identity()))}`)\n"
        f"- merged into the base before this adapter: `{init_adapter}`\n\n"
        "Load with `PeftModel.from_pretrained(base, this_folder)` on the base above, with the init adapter merged "
        "(or `python -m cwpo.modules.export merge this_folder OUT`).\n\n"
        f"## Training settings\n\n{settings}\n"
    )


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    backbone: ModelSpec,
    init_adapter: str | None = None,
    card: str = "",
    is_global_zero: bool = True,
) -> Path | None:
    """Write ``model``'s LoRA adapter to ``out_dir`` in PEFT format, atomically; rank 0 writes.

    Call it on every rank (ZeRO-3 gathers the adapter collectively). Returns the folder on rank 0, else None.

    Raises:
        CwpoError: if the written adapter holds no tensors or a zero-sized one.
    """
    state = adapter_state_dict(model)
    if not is_global_zero:
        return None
    from safetensors.torch import save_file

    config = copy.deepcopy(model.peft_config[model.active_adapter])
    config.inference_mode = True
    if not config.base_model_name_or_path:
        config.base_model_name_or_path = backbone.name_or_path
    out = Path(out_dir)
    with atomic_path(out, is_dir=True) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        (tmp / MODEL_CARD).write_text(card)
        (tmp / BACKBONE_FILE).write_text(
            json.dumps({"backbone": backbone.identity(), "init_adapter": init_adapter}, indent=2) + "\n"
        )
    check_adapter_file(out / ADAPTER_WEIGHTS)
    return out


def save_full_model(model: nn.Module, out_dir: str | Path, *, backbone: ModelSpec, card: str = "") -> Path:
    """Write a fully fine-tuned (no LoRA) model with ``save_pretrained`` plus its tokenizer, atomically."""
    if is_zero3_model(model):
        raise ConfigError(
            "exporting a fully fine-tuned ZeRO-3 model is not supported here; use Lightning's DeepSpeed checkpoint "
            "and deepspeed's zero_to_fp32.py, or train with LoRA"
        )
    out = Path(out_dir)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        _save_tokenizer(backbone, tmp)
        (tmp / MODEL_CARD).write_text(card)
    return out


def _save_tokenizer(backbone: ModelSpec, folder: Path) -> None:
    from cwpo.models import load_tokenizer

    tokenizer = load_tokenizer(backbone)
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))


def export_merged(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    backbone: ModelSpec | None = None,
    init_adapter: str | None = None,
) -> Path:
    """Rebuild the base on the CPU, merge the saved adapter (``merge_and_unload``) and ``save_pretrained`` it.

    ``backbone``/``init_adapter`` default to what ``adapter_dir/cwpo_backbone.json`` records. A ``from_scratch``
    base is rebuilt from its seed, which reproduces the trained base only when it was not built under ZeRO-3.
    """
    from cwpo.models import load_causal_lm

    adapter_dir = Path(adapter_dir)
    if backbone is None:
        recorded = json.loads((adapter_dir / BACKBONE_FILE).read_text())
        backbone = as_model_spec(recorded["backbone"])
        init_adapter = recorded.get("init_adapter")
    base = load_causal_lm(backbone)
    if init_adapter:
        base = merge_adapter(base, init_adapter)
    merged = merge_adapter(base, str(adapter_dir))
    out = Path(out_dir)
    with atomic_path(out, is_dir=True) as tmp:
        merged.save_pretrained(str(tmp))
        _save_tokenizer(backbone, tmp)
        card = (adapter_dir / MODEL_CARD).read_text() if (adapter_dir / MODEL_CARD).is_file() else ""
        (tmp / MODEL_CARD).write_text(card.replace("library_name: peft", "library_name: transformers", 1))
    return out


def export_trained(
    model: nn.Module,
    out_dir: str | Path,
    *,
    backbone: ModelSpec,
    init_adapter: str | None,
    hparams: dict[str, Any],
    title: str,
    merged: bool = False,
    is_global_zero: bool = True,
    barrier: Callable[[], None] | None = None,
) -> None:
    """What a module writes at the end of ``fit``: the adapter (or the full model), and optionally merged weights.

    Called on every rank; the gather is collective, the writing happens on rank 0, then all ranks wait.
    """
    card = model_card(title=title, backbone=backbone, init_adapter=init_adapter, hparams=hparams)
    if hasattr(model, "peft_config"):
        save_adapter(
            model, out_dir, backbone=backbone, init_adapter=init_adapter, card=card, is_global_zero=is_global_zero
        )
        if merged and is_global_zero:
            export_merged(out_dir, Path(out_dir) / "merged", backbone=backbone, init_adapter=init_adapter)
    elif is_global_zero:
        save_full_model(model, out_dir, backbone=backbone, card=card)
    if barrier is not None:
        barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cwpo.modules.export", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge an exported adapter into its base and save_pretrained it")
    merge.add_argument("adapter_dir")
    merge.add_argument("out_dir")
    args = parser.parse_args(argv)
    out = export_merged(args.adapter_dir, args.out_dir)
    print(f"merged model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
