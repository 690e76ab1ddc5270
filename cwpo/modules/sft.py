"""Supervised fine-tuning of the strong model (stage 3, first step), and the causal-LM helpers it shares.

``SFTModule`` trains on prompt + chosen with the causal-LM loss on response tokens only (labels are ``-100``
on prompt and padding), with LoRA (paper: r = 8, α = 16, dropout 0.05) or full fine-tuning. Its exported
adapter is the policy's starting point and reference (``PolicyModule(init_adapter=...)``).

The helpers here are shared by the SFT module, the policy module and the reference precompute:

- :func:`build_causal_lm`: spec → model (init adapter merged, gradient checkpointing, LoRA, dropout off).
- :func:`response_logps`: a batch of sequences → summed response-token log-probs and their counts, by
  ``impl="logits"`` (the model's full logits, then ``sequence_logps``) or ``impl="hidden"`` (the decoder's
  hidden states, the LM head applied to response positions only: no ``(B, T, V)`` logits tensor).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import nn

from cwpo.errors import ConfigError
from cwpo.losses import response_logps_from_hidden, sequence_logps
from cwpo.models import LoraSpec, ModelSpec, apply_lora, as_model_spec, load_causal_lm
from cwpo.modules.optim import OptimConfig, configure_optimizers
from cwpo.modules.resume import ResumeState

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
    from cwpo.modules.export import merge_adapter

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


def plain_hparams(hparams) -> None:
    """Replace dataclass values (``ModelSpec``, ``LoraSpec``, ``OptimConfig``) in ``hparams`` by dicts, in place, so
    checkpoints hold plain data and load with ``torch.load(weights_only=True)``; the modules accept either form."""
    for key, value in list(hparams.items()):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            hparams[key] = dataclasses.asdict(value)


def as_config(value: Any, cls: type) -> Any:
    """``value`` as a ``cls`` dataclass: LightningCLI may hand a dataclass argument over as a plain dict."""
    return cls(**value) if isinstance(value, dict) else value


def check_choice(name: str, value: Any, choices: tuple | list | dict) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


# --------------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------------


class SFTModule(L.LightningModule):
    """Causal-LM fine-tuning on prompt + chosen; loss = mean negative log-likelihood over response tokens.

    The model is built in ``configure_model`` (idempotent, so DeepSpeed ZeRO-3 can shard it at init), never in
    ``__init__``. With ``export_dir`` the LoRA adapter (PEFT format, with a model card) is written at the end of
    ``fit``; pass that folder as the policy's ``init_adapter``.

    Args:
        backbone: the strong model (hub name, local folder, or a config for random init).
        lora: LoRA settings (paper: r = 8, α = 16, dropout 0.05); ``None`` for full fine-tuning.
        optim: optimiser and schedule.
        gradient_checkpointing: non-reentrant activation checkpointing (saves memory, ~30 % slower).
        init_adapter: a PEFT adapter folder merged into the base before training (continue from an adapter).
        logps_impl: ``"logits"`` or ``"hidden"`` (LM head on response tokens only; less memory for big vocabularies).
        export_dir: where to write the adapter (``adapter_model.safetensors``, ``adapter_config.json``,
            ``README.md``) at the end of ``fit``; the full model for ``lora=None``. ``None``: no export.
        export_merged: also write the merged model (base + adapter, ``save_pretrained``) to ``<export_dir>/merged``.
    """

    def __init__(
        self,
        backbone: ModelSpec,
        lora: LoraSpec | None = LoraSpec(),  # noqa: B008 - a frozen-in-practice config default
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        gradient_checkpointing: bool = False,
        init_adapter: str | None = None,
        logps_impl: str = "logits",
        export_dir: str | None = None,
        export_merged: bool = False,
    ) -> None:
        super().__init__()
        lora, optim = as_config(lora, LoraSpec), as_config(optim, OptimConfig)
        check_choice("logps_impl", logps_impl, LOGPS_IMPLS)
        if export_merged and (export_dir is None or lora is None):
            raise ConfigError("export_merged needs export_dir and a LoRA adapter (lora is not None)")
        self.save_hyperparameters()
        plain_hparams(self.hparams)
        # Typed copies: under LightningCLI ``hparams`` holds the parsed config as plain dicts.
        self.backbone = as_model_spec(backbone)
        self.lora, self.optim = lora, optim
        self.model: nn.Module | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self._hf_zero3 = hf_zero3_config(self._trainer)  # must outlive the model: transformers keeps a weak ref
        self.model = build_causal_lm(
            self.backbone,
            lora=self.lora,
            init_adapter=self.hparams.init_adapter,
            gradient_checkpointing=self.hparams.gradient_checkpointing,
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs and response token counts of each row. Shapes (b,), (b,)."""
        return response_logps(
            self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], impl=self.hparams.logps_impl
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, n_tokens)``: the mean NLL over the batch's response tokens (HF's ``labels`` loss)."""
        logps, counts = self(batch)
        n_tokens = counts.sum()
        # clamp instead of a branch: a batch with no response token gives 0, not NaN, without a host sync.
        return -logps.sum() / n_tokens.clamp_min(1), n_tokens

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, n_tokens = self.compute_loss(batch)
        batch_size = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=stage != "train")
        self.log(f"{stage}/response_tokens", n_tokens.float(), batch_size=batch_size, reduce_fx="sum")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return configure_optimizers(self, self.optim)

    def configure_callbacks(self):
        return [ResumeState()]  # random states and loader position in checkpoints (cwpo.modules.resume)

    def save_adapter(self, out_dir: str) -> None:
        """Write the adapter (or the full model without LoRA) in PEFT/transformers format, with a model card."""
        from cwpo.modules.export import export_trained

        trainer = self._trainer
        export_trained(
            self.model,
            out_dir,
            backbone=self.backbone,
            init_adapter=self.hparams.init_adapter,
            hparams=dict(self.hparams),
            title="cwpo SFT model",
            merged=self.hparams.export_merged,
            is_global_zero=trainer.is_global_zero if trainer is not None else True,
            barrier=trainer.strategy.barrier if trainer is not None else None,
        )

    def on_fit_end(self) -> None:
        # A fast_dev_run checks the code path only: it never writes (over) an export.
        if self.hparams.export_dir and not self.trainer.fast_dev_run:
            self.save_adapter(self.hparams.export_dir)
