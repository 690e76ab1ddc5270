"""Saving what SFT and policy training produce: LoRA adapters in PEFT format (ZeRO-3 safe), merged models.

An exported adapter folder holds ``adapter_model.safetensors``, ``adapter_config.json``, ``README.md`` (a model card
written with ``huggingface_hub.ModelCard``), ``cwpo_card.json`` (what the card says, so it can be rewritten with eval
numbers later) and ``cwpo_backbone.json`` (the base model's ``ModelSpec`` and init adapter, so ``merge`` below can
rebuild the base without being told). It loads in one line from any working folder::

    from peft import AutoPeftModelForCausalLM
    model = AutoPeftModelForCausalLM.from_pretrained("runs/default/po/<key>/adapter")

``adapter_config.json`` names its base (``base_model_name_or_path``) by a hub id or an absolute path, never a
relative one. A base that ``from_pretrained`` cannot load by name (a ``from_scratch`` or GGUF backbone) is saved
next to the adapter as ``base/`` (not for a ZeRO-3-partitioned or a > 1B-parameter random model: nothing to share).
An adapter trained on top of an init adapter (LoRA SFT, then LoRA PO) names the init adapter's merged model,
``<init_adapter>/merged``, so it never loads on the bare base by mistake. SFT writes that folder with
``export_merged=True`` (``cwpo run`` does, unless ``strong.merge_sft: false``); without it the load takes two steps,
and fails loudly (no such folder) until the first is done::

    cwpo export merge <init_adapter> <init_adapter>/merged     # once: the SFT model, merged
    AutoPeftModelForCausalLM.from_pretrained(adapter_folder)   # then as above

Under DeepSpeed ZeRO-3 every rank holds only a shard of each parameter; saving ``state_dict()`` there writes
empty tensors (a known failure of naive PEFT saving). :func:`adapter_state_dict` gathers the LoRA parameters
with ``deepspeed.zero.GatheredParameters`` first, on every rank (a collective), and :func:`check_adapter_file`
refuses an adapter with no tensors or a zero-sized one.

Merged export (``merge_and_unload`` + ``save_pretrained``) rebuilds the base on the CPU from its spec and merges
the saved adapter into it, so it works the same after a ZeRO-3 run and never needs a second copy on the GPU:

    cwpo export merge runs/policy/adapter runs/policy/merged

Sharing on the hub (the network only there; tests stand in for ``HfApi``):

    cwpo export adapter runs/policy/adapter --push_to_hub me/cw-dpo-adapter    # base must be a hub model
    cwpo export merge runs/policy/adapter runs/policy/merged --push_to_hub me/cw-dpo
    cwpo export dataset runs/default/annotate/<key>/d_u_labelled.jsonl --push_to_hub me/weak-labels
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cwpo.errors import ConfigError, CwpoError
from cwpo.io import atomic_path, file_hash, plain_data
from cwpo.models import ModelSpec, as_model_spec
from cwpo.modules.causal_lm import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_adapter_file,
    gathered_params,
    is_zero3_model,
    merge_adapter,
)

BACKBONE_FILE = "cwpo_backbone.json"
MODEL_CARD = "README.md"
log = logging.getLogger(__name__)
CARD_FILE = "cwpo_card.json"
BASE_DIR = "base"
MERGED_DIR = "merged"


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


def hub_base_model(backbone: ModelSpec) -> str | None:
    """The hub id of the pretrained model at the root of ``backbone``, for a card's ``base_model``: the name itself
    when it is a hub id, the ``base_model`` of a local folder's own model card (a cwpo export of a hub model), else
    ``None`` (random init, a packaged or local model without a card)."""
    from cwpo.models import SYNTHETIC, _looks_local

    name = backbone.name_or_path
    if backbone.from_scratch or name == SYNTHETIC or name.startswith("package:"):
        return None
    path = Path(name).expanduser()
    if not path.exists():
        return None if _looks_local(name) else name
    card = path / MODEL_CARD
    if not card.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        base = ModelCard.load(card).data.base_model
    except Exception:  # a hand-written README that is not a model card
        return None
    return base if isinstance(base, str) else None


def loadable_base(backbone: ModelSpec) -> str | None:
    """What ``from_pretrained`` loads ``backbone``'s weights from by name, usable from any working folder: an
    absolute folder or a hub id; ``None`` when nothing can (random init, a GGUF file, the synthetic task's model).
    Config overrides in the spec change the config, never the weights, and are not carried over."""
    from cwpo.models import SYNTHETIC, packaged_model_path

    name = backbone.name_or_path
    if backbone.from_scratch or backbone.gguf_file or name == SYNTHETIC:
        return None
    if name.startswith("package:"):
        path = packaged_model_path(name.removeprefix("package:"))
        return None if path.is_file() else str(path.resolve())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _recorded_backbone(backbone: ModelSpec) -> dict[str, Any]:
    """``backbone.identity()`` with a local folder made absolute, so ``merge`` works from any working folder."""
    identity = backbone.identity()
    if Path(backbone.name_or_path).expanduser().exists():
        identity["name_or_path"] = _absolute(backbone.name_or_path)
    return identity


def card_info(
    *,
    title: str,
    backbone: ModelSpec,
    init_adapter: str | None,
    hparams: dict[str, Any],
    library_name: str = "peft",
    base_model_path: str | None = None,
) -> dict[str, Any]:
    """What a model card says, as JSON data (kept next to the weights in ``cwpo_card.json``; see :func:`update_card`)."""
    settings = {key: plain_data(value) for key, value in sorted(hparams.items()) if key != "backbone"}
    return {
        "title": title,
        "library_name": library_name,
        "base_model": hub_base_model(backbone),
        "base_model_path": base_model_path,
        "backbone": plain_data(_recorded_backbone(backbone)),
        "init_adapter": _absolute(init_adapter),
        "settings": json.loads(json.dumps(settings, default=str)),
        "datasets": [],
        "eval": {},
        "eval_dataset": None,
    }


def render_card(info: dict[str, Any]):
    """A ``huggingface_hub.ModelCard`` from :func:`card_info` data: ``ModelCardData`` metadata (library, base model,
    datasets, tags, eval results) and a text with how it was trained, how to load it, and its eval numbers."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    datasets = [d["id"] for d in info.get("datasets") or [] if d.get("id")]
    evals = {key: value for key, value in (info.get("eval") or {}).items() if isinstance(value, int | float)}
    eval_dataset = info.get("eval_dataset") or {}
    peft = info["library_name"] == "peft"
    results = [
        EvalResult(
            task_type=info.get("task_type", "text-generation"),
            dataset_type=eval_dataset.get("id") or eval_dataset.get("name") or "custom",
            dataset_name=eval_dataset.get("name") or "test prompts",
            metric_type=key,
            metric_value=float(value),
        )
        for key, value in evals.items()
    ]
    data = ModelCardData(
        library_name=info["library_name"],
        base_model=info.get("base_model"),
        datasets=datasets or None,
        tags=["cwpo", *(["lora"] if peft else []), *info.get("tags", ["preference-optimization"])],
        pipeline_tag=info.get("pipeline_tag", "text-generation"),
        model_name=info["title"],
        eval_results=results or None,
    )
    loader = info.get("loader") or ("AutoPeftModelForCausalLM" if peft else "AutoModelForCausalLM")
    module = "peft" if loader.startswith("AutoPeft") else "transformers"
    path, hub = info.get("base_model_path"), info.get("base_model")
    base = f"`{hub}`" + (f" (loaded from `{path}`)" if path and path != hub else "") if hub else (
        f"`{path or info['backbone']['name_or_path']}` (not on the hub)")  # fmt: skip
    lines = [
        f"# {info['title']}",
        "",
        "Trained with cwpo (Confidence-Weighted Preference Optimization: a weak annotator labels preference pairs "
        "with a confidence c; the strong model is aligned with c-weighted DPO/IPO/rDPO).",
        "",
        f"- base model: {base}",
        f"- trained from: `{json.dumps(info['backbone'])}`",
    ]
    if info.get("init_adapter"):
        lines.append(f"- merged into the base before this adapter: `{info['init_adapter']}`")
    for dataset in info.get("datasets") or []:
        lines.append(f"- training data: `{dataset.get('id') or dataset.get('name')}`" + (
            f" ({dataset['note']})" if dataset.get("note") else ""))  # fmt: skip
    lines += ["", "## How to load", "", "```python", f"from {module} import {loader}", "",
              f'model = {loader}.from_pretrained("path/to/this/folder")', "```", ""]  # fmt: skip
    if evals:
        lines += ["## Evaluation", "", f"On {eval_dataset.get('name') or 'the test prompts'}:", "",
                  "| metric | value |", "|---|---|", *(f"| {k} | {v:.4g} |" for k, v in evals.items()), ""]  # fmt: skip
    settings = info.get("settings") or {}
    lines += ["## Training settings", "", *(f"- `{k}`: `{json.dumps(v)}`" for k, v in settings.items()), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_card(folder: str | Path, info: dict[str, Any]) -> None:
    """Write ``info`` (``cwpo_card.json``) and the model card it renders (``README.md``) into ``folder``."""
    folder = Path(folder)
    with atomic_path(folder / CARD_FILE) as tmp:
        tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    with atomic_path(folder / MODEL_CARD) as tmp:
        render_card(info).save(str(tmp))


def update_card(folder: str | Path, **changes: Any) -> None:
    """Rewrite an exported folder's model card with ``changes`` to its :func:`card_info` data (a title, the
    ``datasets``, the ``eval`` numbers once they are known); ``eval`` is merged into what the card holds."""
    folder = Path(folder)
    info = json.loads((folder / CARD_FILE).read_text())
    if "eval" in changes:
        changes["eval"] = {**info.get("eval", {}), **(changes["eval"] or {})}
    write_card(folder, {**info, **changes})


def dataset_card_entry(spec: Any) -> dict[str, Any]:
    """A card's ``datasets`` entry for a :class:`cwpo.data.DatasetSpec` value: the hub id of its loader (``None``
    for local and synthetic data) and a readable name."""
    import importlib

    from cwpo.data.registry import _LOADERS, as_dataset_spec

    try:
        spec = as_dataset_spec(spec)
    except CwpoError:
        return {"id": None, "name": str(spec)}
    hub_id = None
    if spec.name in _LOADERS and spec.path is None:
        hub_id = getattr(importlib.import_module(_LOADERS[spec.name][0]), "HUB_NAME", None)
    name = spec.path if spec.path else spec.name
    return {"id": hub_id, "name": f"{spec.name}: {name}" if spec.path else name}


def stacked_base(init_adapter: str) -> str:
    """Where an adapter stacked on ``init_adapter`` finds its base: ``<init_adapter>/merged`` (absolute), written
    when its SFT exported merged weights, else by ``cwpo export merge`` (see the module docstring)."""
    merged = Path(init_adapter) / MERGED_DIR
    if not (merged / "config.json").is_file():
        log.warning("%s has no merged model yet: adapters stacked on it load with AutoPeftModelForCausalLM after "
                    "`cwpo export merge %s %s`", init_adapter, init_adapter, merged)  # fmt: skip
    return _absolute(str(merged))


def _worth_saving(model: nn.Module) -> bool:
    """Whether a random-init base is saved next to its adapter: not when ZeRO-3 partitions it (its seed does not
    reproduce it) nor past a billion parameters (benchmark shapes: a random model is not worth the disk)."""
    return not is_zero3_model(model) and sum(p.numel() for p in model.parameters()) <= 1_000_000_000


def _write_base(backbone: ModelSpec, init_adapter: str | None, folder: Path) -> None:
    """The adapter's base, rebuilt on the CPU (an init adapter merged), as a ``save_pretrained`` folder."""
    from cwpo.models import load_causal_lm

    base = load_causal_lm(backbone)
    if init_adapter:
        base = merge_adapter(base, init_adapter)
    base.save_pretrained(str(folder))
    _save_tokenizer(backbone, folder)


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    backbone: ModelSpec,
    init_adapter: str | None = None,
    card: dict[str, Any] | None = None,
    is_global_zero: bool = True,
) -> Path | None:
    """Write ``model``'s LoRA adapter to ``out_dir`` in PEFT format, atomically; rank 0 writes.

    ``base_model_name_or_path`` is a hub id or an absolute path (the module docstring says which); a base that
    cannot be loaded by name is written to ``out_dir/base``. ``card`` is :func:`card_info` data. Call it on every
    rank (ZeRO-3 gathers the adapter collectively). Returns the folder on rank 0, else None.

    Raises:
        CwpoError: if the written adapter holds no tensors or a zero-sized one.
    """
    state = adapter_state_dict(model)
    if not is_global_zero:
        return None
    from safetensors.torch import save_file

    config = copy.deepcopy(model.peft_config[model.active_adapter])
    config.inference_mode = True
    out = Path(out_dir)
    reference = loadable_base(backbone) if init_adapter is None else stacked_base(init_adapter)
    if card is None:
        card = card_info(title="cwpo adapter", backbone=backbone, init_adapter=init_adapter, hparams={})
    with atomic_path(out, is_dir=True) as tmp:
        if reference is None and _worth_saving(model):
            _write_base(backbone, None, tmp / BASE_DIR)
            reference = _absolute(str(out / BASE_DIR))
        config.base_model_name_or_path = reference or backbone.name_or_path  # None: no loadable base anywhere
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        write_card(tmp, {**card, "base_model_path": reference})
        (tmp / BACKBONE_FILE).write_text(
            json.dumps({"backbone": _recorded_backbone(backbone), "init_adapter": _absolute(init_adapter)}, indent=2)
            + "\n"
        )
    check_adapter_file(out / ADAPTER_WEIGHTS)
    return out


def save_full_model(model: nn.Module, out_dir: str | Path, *, backbone: ModelSpec, card: dict[str, Any]) -> Path:
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
        write_card(tmp, {**card, "library_name": "transformers"})
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
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise ConfigError(f"{adapter_dir}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    if backbone is None:
        if not (adapter_dir / BACKBONE_FILE).is_file():
            raise ConfigError(f"{adapter_dir}: no {BACKBONE_FILE} (not exported by cwpo); pass the backbone")
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
        if (adapter_dir / CARD_FILE).is_file():
            info = json.loads((adapter_dir / CARD_FILE).read_text())
            write_card(tmp, {**info, "library_name": "transformers", "base_model_path": None})
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
    card = card_info(title=title, backbone=backbone, init_adapter=init_adapter, hparams=hparams)
    if hasattr(model, "peft_config"):
        save_adapter(
            model, out_dir, backbone=backbone, init_adapter=init_adapter, card=card, is_global_zero=is_global_zero
        )
        if merged and is_global_zero:
            export_merged(out_dir, Path(out_dir) / MERGED_DIR, backbone=backbone, init_adapter=init_adapter)
    elif is_global_zero:
        save_full_model(model, out_dir, backbone=backbone, card=card)
    if barrier is not None:
        barrier()


# -- sharing on the hub ------------------------------------------------------------------------------------------
def _api(api=None, token: str | None = None):
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi(token=token)


def push_folder(folder: str | Path, repo_id: str, *, repo_type: str = "model", private: bool = False, api=None,
                ignore: list[str] | None = None) -> str:  # fmt: skip
    """Create ``repo_id`` (if new) and upload ``folder`` to it in one commit; return the repo's URL."""
    api = _api(api)
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, ignore_patterns=ignore,
                      commit_message=f"Upload {Path(folder).name} with cwpo export")  # fmt: skip
    return str(url)


def push_adapter(folder: str | Path, repo_id: str, *, private: bool = False, api=None) -> str:
    """Push an exported adapter; its base must be a hub model (others cannot load a base on this disk).

    Raises:
        ConfigError: the folder is not an adapter, or its base is a local folder (push the merged model instead).
    """
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{folder}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    check_adapter_file(folder / ADAPTER_WEIGHTS)
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
    if not base or Path(base).is_absolute() or Path(base).exists():
        raise ConfigError(
            f"{folder}: the adapter's base is the local folder {base!r}, which nobody else can load; push the merged "
            f"model instead: cwpo export merge {folder} OUT --push_to_hub {repo_id}"
        )
    return push_folder(folder, repo_id, private=private, api=api, ignore=[f"{BASE_DIR}/*", f"{MERGED_DIR}/*"])


def export_dataset(source: str | Path, out_dir: str | Path) -> Path:
    """An annotated (or any) pair file as a hub dataset folder: ``data/train.parquet`` and a dataset card.

    The file is read with the ``local`` loader, so a file that breaks the record schema is refused here, not by
    whoever downloads it.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    from cwpo.data.local import load_local

    source = Path(source)
    data = load_local(source)
    out = Path(out_dir)
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "data").mkdir()
        data.to_parquet(str(tmp / "data" / "train.parquet"))
        card_data = DatasetCardData(tags=["cwpo", "preference", "weak-supervision"], task_categories=["text-generation"],
                                    configs=[{"config_name": "default", "data_files": "data/train.parquet"}])  # fmt: skip
        weak = "confidence" in data.column_names
        text = (
            f"# {source.stem}\n\n{len(data)} preference pairs (`prompt`, `chosen`, `rejected`) written by cwpo"
            + (
                ", labelled by a weak annotator: `chosen` is the response it prefers, `confidence` = 2σ(|Δ|) − 1 of "
                "its score margin, `weak_score_*` its scores, `human_label` whether the human label agrees."
                if weak
                else "."
            )
            + f"\n\nColumns: {', '.join(f'`{c}`' for c in data.column_names)}.\n"
        )
        DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{text}").save(str(tmp / MODEL_CARD))
    return out


def push_dataset(source: str | Path, repo_id: str, *, private: bool = False, api=None) -> str:
    """:func:`export_dataset` into a temporary folder, then push it as a dataset repo."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = export_dataset(source, Path(tmp) / "dataset")
        return push_folder(folder, repo_id, repo_type="dataset", private=private, api=api)


def build_parser():
    """``cwpo export merge|adapter|dataset``: jsonargparse subcommands, each with ``--push_to_hub``, ``--private``."""
    from jsonargparse import ArgumentParser

    def command(*positional: str, help_text: str) -> ArgumentParser:
        sub = ArgumentParser(exit_on_error=False, description=help_text)
        for name in positional:
            sub.add_argument(name, type=str)
        sub.add_argument("--push_to_hub", type=str | None, default=None, help="upload to this hub repo (org/name)")
        sub.add_argument("--private", type=bool, default=False, help="create the hub repo private")
        return sub

    parser = ArgumentParser(prog="cwpo export", description=__doc__.split("\n")[0], exit_on_error=False)
    commands = parser.add_subcommands(dest="command")
    merge = "merge an exported adapter into its base and save_pretrained it"
    commands.add_subcommand("merge", command("adapter_dir", "out_dir", help_text=merge), help=merge)
    adapter = "push an exported adapter (its base must be a hub model)"
    commands.add_subcommand("adapter", command("adapter_dir", help_text=adapter), help=adapter)
    dataset = "an annotated pair file as a hub dataset (parquet + card)"
    pairs = command("file", help_text=dataset)
    pairs.add_argument("--out_dir", type=str | None, default=None, help="write the dataset folder here")
    commands.add_subcommand("dataset", pairs, help=dataset)
    return parser


def main(argv: list[str] | None = None, *, api=None) -> int:
    from jsonargparse import ArgumentError

    from cwpo.errors import argument_error

    try:
        namespace = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except ArgumentError as err:
        raise argument_error(err, "cwpo export") from None
    args = namespace[namespace.command]
    if namespace.command == "merge":
        out = export_merged(args.adapter_dir, args.out_dir)
        print(f"merged model written to {out}")
        if args.push_to_hub:
            print(f"pushed to {push_folder(out, args.push_to_hub, private=args.private, api=api)}")
    elif namespace.command == "adapter":
        if not args.push_to_hub:
            raise ConfigError("adapter: give --push_to_hub REPO_ID (the folder itself is already the export)")
        print(f"pushed to {push_adapter(args.adapter_dir, args.push_to_hub, private=args.private, api=api)}")
    else:
        if not args.push_to_hub and not args.out_dir:
            raise ConfigError("dataset: give --out_dir FOLDER, --push_to_hub REPO_ID, or both")
        if args.out_dir:
            print(f"dataset folder written to {export_dataset(args.file, args.out_dir)}")
        if args.push_to_hub:
            print(f"pushed to {push_dataset(args.file, args.push_to_hub, private=args.private, api=api)}")
    return 0


if __name__ == "__main__":
    from cwpo.errors import run_command

    sys.exit(run_command(main, sys.argv[1:]))
