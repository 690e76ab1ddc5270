"""Supervised fine-tuning of the strong model (stage 3, first step).

``SFTModule`` trains on prompt + chosen with the causal-LM loss on response tokens only (labels are ``-100``
on prompt and padding), with LoRA (paper: r = 8, α = 16, dropout 0.05) or full fine-tuning. Its exported
adapter is the policy's starting point and reference (``PolicyModule(init_adapter=...)``). The model building
and log-prob helpers it shares with the other modules are in :mod:`cwpo.modules.causal_lm`.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from cwpo.errors import ConfigError
from cwpo.models import LoraSpec, ModelSpec, as_model_spec
from cwpo.modules.causal_lm import LOGPS_IMPLS, build_causal_lm, hf_zero3_config, response_logps
from cwpo.modules.hparams import as_config, check_choice, plain_hparams
from cwpo.modules.optim import OptimConfig, configure_optimizers
from cwpo.modules.resume import ResumeState


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
