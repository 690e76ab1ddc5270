"""Loading a trained weak annotator for ``annotate``, and exporting one as a plain Hugging Face folder.

Two forms are accepted:

- a **Lightning checkpoint** (``.ckpt``) of :class:`~cwpo.modules.annotator.AnnotatorModule` or
  :class:`~cwpo.modules.annotator.PairRMModule`, as ``python -m cwpo.fit --model annotator`` writes it (e.g.
  ``runs/annotator/.../checkpoints/last.ckpt``). It is read with ``torch.load(weights_only=True)``: the modules
  store their hyper-parameters as plain values, so no pickled object is ever executed. The backbone is rebuilt
  from the stored :class:`~cwpo.models.ModelSpec` (so its tokenizer and config must be reachable, as when it
  was trained) and the trained weights are loaded over it.
- an **exported folder** written by :func:`export_annotator`: ``config.json`` + ``model.safetensors`` of the
  scalar-head classifier, its tokenizer, and ``cwpo_annotator.json`` (which module, its pooling and budgets).
  Self-contained: it loads without the original backbone.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cwpo.errors import ConfigError
from cwpo.io import atomic_path, write_json

ANNOTATOR_FILE = "cwpo_annotator.json"


def _module_classes() -> dict[str, type]:
    from cwpo.modules.annotator import AnnotatorModule, PairRMModule

    return {"bt": AnnotatorModule, "pairrm": PairRMModule}


def _build(annotator_type: str, hparams: dict[str, Any]):
    classes = _module_classes()
    if annotator_type not in classes:
        raise ConfigError(f"unknown annotator type {annotator_type!r}; expected one of {sorted(classes)}")
    cls = classes[annotator_type]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in hparams.items() if k in accepted})


def load_checkpoint(path: str | os.PathLike):
    """An annotator module with the weights of a Lightning checkpoint, in eval mode, on the CPU."""
    import torch

    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "annotator_type" not in hparams:
        raise ConfigError(f"{path} is not a checkpoint of a cwpo annotator (no 'annotator_type' hyper-parameter)")
    module = _build(hparams["annotator_type"], hparams)
    module.configure_model()
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


def export_annotator(module, folder: str | os.PathLike) -> Path:
    """Save a trained annotator as a self-contained Hugging Face folder (see the module docstring), atomically."""
    folder = Path(folder)
    module.configure_model()
    settings = {
        "annotator_type": module.annotator_type,
        "pooling": module.pooling,
        "trained_from": asdict(module.backbone),
    }
    for name in ("max_prompt_tokens", "max_response_tokens"):
        if hasattr(module, name):
            settings[name] = getattr(module, name)
    with atomic_path(folder, is_dir=True) as tmp:
        module.model.save_pretrained(tmp, safe_serialization=True)
        module.tokenizer.save_pretrained(tmp)
        write_json(tmp / ANNOTATOR_FILE, settings)
        _write_card(module, tmp)
    return folder


def _write_card(module, folder: Path) -> None:
    """The annotator's model card (``huggingface_hub.ModelCard``; eval numbers are added by ``update_card``)."""
    from cwpo.modules.export import card_info, write_card

    info = card_info(title=f"cwpo weak annotator ({module.annotator_type})", backbone=module.backbone,
                     init_adapter=None, hparams=dict(getattr(module, "hparams", {})), library_name="transformers")  # fmt: skip
    info |= {"pipeline_tag": "text-classification", "tags": ["reward-model", "preference"],
             "loader": "AutoModelForSequenceClassification", "task_type": "text-classification"}  # fmt: skip
    write_card(folder, info)


def load_exported(folder: str | os.PathLike):
    """An annotator module from a folder written by :func:`export_annotator`, in eval mode, on the CPU."""
    from cwpo.models import ModelSpec

    folder = Path(folder)
    settings = json.loads((folder / ANNOTATOR_FILE).read_text())
    trained_from = settings.get("trained_from", {})
    backbone = ModelSpec(str(folder), dtype=trained_from.get("dtype", "float32"))
    hparams = {k: v for k, v in settings.items() if k not in ("annotator_type", "trained_from")}
    module = _build(settings["annotator_type"], {"backbone": backbone, **hparams})
    module.configure_model()
    return module.eval()


def load_annotator(source):
    """A ready annotator from a ``.ckpt`` file, an exported folder, or an annotator module (returned as is).

    Raises:
        ConfigError: ``source`` is none of these.
    """
    from cwpo.modules.annotator import _ScalarHeadModule

    if isinstance(source, _ScalarHeadModule):
        source.configure_model()
        return source
    path = Path(source)
    if path.is_file():
        return load_checkpoint(path)
    if path.is_dir() and (path / ANNOTATOR_FILE).exists():
        return load_exported(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder without {ANNOTATOR_FILE}: export it with export_annotator()")
    raise ConfigError(f"no annotator at {path}: expected a Lightning .ckpt or a folder from export_annotator()")
