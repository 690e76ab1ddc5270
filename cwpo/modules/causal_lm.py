"""The causal-LM toolbox every module shares: building a model from its spec (init adapter merged, LoRA,
gradient checkpointing, dropout off), ZeRO-3 helpers, and response log-probs.

- :func:`build_causal_lm`: spec → model (init adapter merged, gradient checkpointing, LoRA, dropout off).
- :func:`merge_adapter`: a PEFT adapter folder merged into a model's weights (ZeRO-3 safe).
- :func:`response_logps`: a batch of sequences → summed response-token log-probs and their counts, by
  ``impl="logits"`` (the model's full logits, then ``sequence_logps``) or ``impl="hidden"`` (the decoder's
  hidden states, the LM head applied to response positions only: no ``(B, T, V)`` logits tensor).
- :func:`is_zero3_param`, :func:`gathered_params`, :func:`hf_zero3_config`: DeepSpeed ZeRO-3 partitioned weights.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cwpo.errors import ConfigError, CwpoError
from cwpo.losses import response_logps_from_hidden, sequence_logps
from cwpo.models import LoraSpec, ModelSpec, apply_lora, as_model_spec, load_causal_lm

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

LOGPS_IMPLS = ("logits", "hidden")
"""How response log-probs are computed: ``logits`` (full logits) or ``hidden`` (LM head on response rows only)."""


# --------------------------------------------------------------------------------------------------------------
# Building the model
# --------------------------------------------------------------------------------------------------------------


def is_zero3_param(param: torch.Tensor) -> bool:
    """True for a parameter partitioned by DeepSpeed ZeRO-3 (its local ``data`` is an empty placeholder)."""
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered_params(params: list[torch.Tensor], *, modifier_rank: int | None = None) -> Iterator[None]:
    """Gather ZeRO-3-partitioned ``params`` to full tensors for the block; a no-op for ordinary parameters.

    Args:
        params: parameters to gather.
        modifier_rank: the rank whose in-place changes are kept and broadcast on exit (``None``: read only).
    """
    partitioned = [p for p in params if is_zero3_param(p)]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield


def hf_zero3_config(trainer: Any) -> Any:
    """A live ``HfDeepSpeedConfig`` when ``trainer`` runs DeepSpeed ZeRO stage 3, else None. Keep it referenced.

    transformers decides whether ZeRO-3 is on through a weak reference to such an object: with it, ``from_pretrained``
    loads checkpoints into the partitioned parameters shard by shard, and random init (``from_scratch``) gathers
    each module's parameters before initialising them. Without it, building under Lightning's ``zero.Init`` context
    would initialise empty placeholders (an index error for embeddings with a padding row).
    """
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if not getattr(strategy, "zero_stage_3", False):
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(strategy.config)


def disable_dropout(model: nn.Module) -> None:
    """Switch off the base model's dropout (``nn.Dropout`` modules and float ``*dropout`` attributes).

    LoRA's own ``lora_dropout`` is kept: it is a LoRA hyper-parameter (paper: 0.05), and it is inactive whenever
    the adapter is disabled, so it never perturbs the reference. Base-model dropout would make the policy's
    log-probs noisy and differ from a reference computed in eval mode (the usual DPO practice is to turn it off).
    """
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout", "activation_dropout", "layerdrop"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing (works with frozen inputs and LoRA), KV cache off.

    transformers 5.x renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``; either is used.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def _reinit_lora_under_zero3(model: nn.Module) -> None:
    """Re-run PEFT's LoRA initialisation on gathered parameters.

    Under ``deepspeed.zero.Init`` each new ``nn.Linear`` is partitioned as soon as it is built, so PEFT's
    ``zeros_(lora_B)`` lands on an empty placeholder and ``lora_B`` keeps a random init: the policy would not
    start equal to the reference. Gathering the LoRA parameters and initialising again fixes that.
    """
    from peft.tuners.lora import LoraLayer

    lora_params = [p for n, p in model.named_parameters() if "lora_" in n]
    if not any(is_zero3_param(p) for p in lora_params):
        return
    with gathered_params(lora_params, modifier_rank=0):
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for adapter_name in module.lora_A:
                    module.reset_lora_parameters(adapter_name, True)


def build_causal_lm(
    backbone: ModelSpec | str | dict,
    *,
    lora: LoraSpec | None = None,
    init_adapter: str | None = None,
    gradient_checkpointing: bool = False,
    no_dropout: bool = False,
    trainable: bool = True,
) -> nn.Module:
    """The causal LM for ``backbone``: init adapter merged into the base, then optional LoRA on top.

    Args:
        backbone: the base model's spec.
        lora: wrap the model in a fresh LoRA adapter (only adapter weights trainable); ``None``: all weights.
        init_adapter: a PEFT adapter folder (e.g. the SFT run's export) merged into the base weights first, so
            the base (adapter disabled) is the SFT model.
        gradient_checkpointing: non-reentrant activation checkpointing, with input grads enabled for PEFT.
        no_dropout: switch off the base model's dropout (see :func:`disable_dropout`).
        trainable: ``False`` freezes every weight and puts the model in eval mode (a reference model).
    """
    spec = as_model_spec(backbone)
    model = load_causal_lm(spec)
    if init_adapter:
        model = merge_adapter(model, init_adapter)
    if gradient_checkpointing and trainable:
        enable_gradient_checkpointing(model)
    if lora is not None and trainable:
        # LoRA A matrices are random: seed them from the spec so the same config gives the same start.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed + 1)
            # Under ZeRO-3 PEFT's float32 upcast would replace the partitioned LoRA parameters with empty ones.
            zero3 = any(is_zero3_param(p) for p in model.parameters())
            model = apply_lora(model, lora, autocast_adapter_dtype=not zero3)
        _reinit_lora_under_zero3(model)
        if gradient_checkpointing:
            model.enable_input_require_grads()
    if no_dropout:
        disable_dropout(model)
    if not trainable:
        model.requires_grad_(False)
    # Train mode explicitly: PEFT leaves a merged init adapter's base in eval mode, and Lightning keeps the modes it
    # finds (an eval-mode base would also skip gradient checkpointing, which only runs in training mode).
    model.train(trainable)
    return model


# --------------------------------------------------------------------------------------------------------------
# Response log-probs
# --------------------------------------------------------------------------------------------------------------


def _base_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _logps_from_logits(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return sequence_logps(logits, labels)


def _logps_from_hidden(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    base = _base_lm(model)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(base.config, attr, None) not in (None, 1.0):
            raise ConfigError(f"logps_impl='hidden' needs a plain linear LM head; this model sets config.{attr}")
    head = base.get_output_embeddings()
    if not isinstance(head, nn.Linear) or hasattr(head, "base_layer"):
        raise ConfigError("logps_impl='hidden' needs a plain nn.Linear LM head (not adapted by LoRA); use 'logits'")
    decoder = getattr(base, base.base_model_prefix)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    weight, bias = head.weight, head.bias
    if is_zero3_param(weight):
        # The head is partitioned outside its own forward: gather it and use a copy, since the backward pass
        # reads the saved weight after the gather has ended. Only valid for a frozen head (LoRA).
        if weight.requires_grad:
            raise ConfigError("logps_impl='hidden' under ZeRO-3 needs a frozen LM head (LoRA); use 'logits'")
        with gathered_params([p for p in (weight, bias) if p is not None]):
            weight = weight.detach().clone()
            bias = bias.detach().clone() if bias is not None else None
    return response_logps_from_hidden(hidden, weight, labels, lm_head_bias=bias)


_LOGPS_FNS = {"logits": _logps_from_logits, "hidden": _logps_from_hidden}


def response_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    impl: str = "logits",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each row's response tokens (``labels != -100``, not shifted) and their counts.

    Args:
        model: a causal LM, optionally PEFT-wrapped.
        input_ids: Shape (B, T).
        attention_mask: Shape (B, T).
        labels: ``input_ids`` on response tokens, ``-100`` elsewhere. Shape (B, T).
        impl: ``"logits"`` (``sequence_logps`` on the model's logits) or ``"hidden"`` (decoder hidden states,
            LM head on response positions only; ``response_logps_from_hidden``).

    Returns:
        ``(logps, token_counts)``, float32 and int64. Shapes (B,), (B,).
    """
    if impl not in _LOGPS_FNS:
        raise ConfigError(f"unknown logps_impl {impl!r}; choose from {', '.join(LOGPS_IMPLS)}")
    return _LOGPS_FNS[impl](model, input_ids, attention_mask, labels)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block (no dropout), then the previous mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------------------
# Merging adapters
# --------------------------------------------------------------------------------------------------------------


def is_zero3_model(model: nn.Module) -> bool:
    """True when any of ``model``'s parameters is partitioned by DeepSpeed ZeRO-3."""
    return any(is_zero3_param(p) for p in model.parameters())


def merge_adapter(model: nn.Module, adapter_dir: str) -> nn.Module:
    """Merge the PEFT adapter in ``adapter_dir`` into ``model``'s weights and return the plain model.

    Under ZeRO-3 (a partitioned model, built in ``configure_model`` under ``deepspeed.zero.Init``) the adapter's
    ``B @ A`` deltas are added to gathered weights instead (plain LoRA only).

    Raises:
        ConfigError: if the folder holds no adapter (or, under ZeRO-3, an adapter that is not plain LoRA).
    """
    folder = Path(adapter_dir)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{folder}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    check_adapter_file(folder / ADAPTER_WEIGHTS)
    if is_zero3_model(model):
        return _merge_lora_into_partitioned(model, folder)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder), is_trainable=False).merge_and_unload()


def _merge_lora_into_partitioned(model: nn.Module, folder: Path) -> nn.Module:
    """``W += scale · B @ A`` for each LoRA pair of a plain-LoRA adapter, on a ZeRO-3-partitioned model.

    PEFT's own loading writes into the partitioned placeholders; here each target weight is gathered (rank 0
    modifies it, DeepSpeed broadcasts and re-partitions it on exit) and the delta is added as PEFT's
    ``merge_and_unload`` would (``get_delta_weight``). Only plain LoRA on linear layers (what cwpo exports).
    """
    from safetensors.torch import load_file

    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    unsupported = [key for key in ("use_dora", "fan_in_fan_out", "modules_to_save") if config.get(key)]
    if config.get("peft_type", "LORA") != "LORA" or unsupported:
        raise ConfigError(f"{folder}: only plain LoRA adapters can be merged under ZeRO-3 (found {unsupported})")
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    modules = dict(model.named_modules())
    for key_a in sorted(k for k in state if k.endswith(".lora_A.weight")):
        name = key_a.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
        target = modules.get(name)
        if not isinstance(target, nn.Linear):
            raise ConfigError(f"{folder}: adapter module {name!r} is not a linear layer of this model")
        lora_a, lora_b = state[key_a].float(), state[key_a.replace(".lora_A.", ".lora_B.")].float()
        with gathered_params([target.weight], modifier_rank=0), torch.no_grad():
            delta = (lora_b @ lora_a) * scale
            target.weight.add_(delta.to(target.weight.device, target.weight.dtype))
    return model


def check_adapter_file(path: str | Path) -> int:
    """Raise CwpoError unless ``path`` holds at least one tensor and no zero-sized one; return the count."""
    from safetensors import safe_open

    count = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            shape = handle.get_slice(key).get_shape()
            if 0 in shape or len(shape) == 0:
                raise CwpoError(f"{path}: tensor {key!r} has shape {shape} (an unsaved ZeRO-3 shard?)")
            count += 1
    if count == 0:
        raise CwpoError(f"{path}: the adapter holds no tensors")
    return count
