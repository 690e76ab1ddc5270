"""The strong policy: (confidence-weighted) DPO / IPO / rDPO with LoRA against a frozen reference (stage 3).

One module for every objective: the per-pair loss is looked up by name in ``cwpo.losses.OBJECTIVES`` and called
with the log-ratios ``log π_θ(y|x) - log π_ref(y|x)`` of chosen and rejected (Eq. 9-11 of CW-PO); each pair is
scaled by its weight ``c`` and the batch reduced by ``cwpo.losses.weighted_loss`` (Eq. 7). Which objective,
which weights and which reference are configuration, never edits of this file.

Pieces that can be swapped on their own:

- :meth:`PolicyModule.pair_logps`: a pair batch → summed response log-probs of chosen and rejected, with one
  forward of the ``2b`` rows (a prefix-sharing forward can replace it).
- :data:`WEIGHTINGS`: ``confidence`` (the batch's ``weights``, i.e. the dataset's ``confidence`` column),
  ``uniform`` (c = 1: plain DPO/IPO/rDPO on weak labels) and ``top_n`` (1 for the ``top_n_fraction`` most
  confident pairs of the whole dataset, 0 for the rest; computed once per dataset at fit start).
- The reference (``reference=``): ``adapter_disabled`` (the policy with its LoRA adapter off: the SFT model,
  no second copy of the weights), ``separate`` (a second frozen model built from the same spec) or
  ``precomputed`` (log-probs cached on disk by ``cwpo.modules.reference`` and read by row index: no reference
  forward at all while training). All three give the same loss.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from cwpo.errors import ConfigError
from cwpo.losses import REDUCTIONS, get_objective, top_n_weights, weighted_loss
from cwpo.models import LoraSpec, ModelSpec, as_model_spec
from cwpo.modules.causal_lm import (
    LOGPS_IMPLS,
    build_causal_lm,
    eval_mode,
    hf_zero3_config,
    is_zero3_param,
    response_logps,
)
from cwpo.modules.hparams import as_config, check_choice, plain_hparams
from cwpo.modules.optim import OptimConfig, configure_optimizers
from cwpo.modules.prefix import PairLogps, num_pairs, pair_logps_of_batch
from cwpo.modules.reference import REFERENCE_MODES, cached_reference_logps, collect_by_index, tokenization_settings
from cwpo.modules.resume import ResumeState


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor], *, impl: str = "logits") -> PairLogps:
    """Chosen and rejected log-probs from one forward pass of the batch's ``2b`` rows (rows ``b..2b-1`` rejected)."""
    logps, counts = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], impl=impl)
    pairs = logps.shape[0] // 2
    return PairLogps(logps[:pairs], logps[pairs:], counts[:pairs], counts[pairs:])


@dataclass(frozen=True)
class Weighting:
    """How per-pair weights come from confidences.

    Attributes:
        fn: ``(confidence, top_n_fraction) -> weights``. Shapes (n,) -> (n,).
        dataset_level: ``fn`` needs every pair's confidence at once (applied to the whole dataset at fit start and
            read by row index); otherwise it is applied to each batch's ``weights``.
    """

    fn: Callable[[torch.Tensor, float], torch.Tensor]
    dataset_level: bool = False


def _as_confidence(confidence: torch.Tensor, fraction: float) -> torch.Tensor:
    return confidence


def _uniform(confidence: torch.Tensor, fraction: float) -> torch.Tensor:
    return torch.ones_like(confidence)


WEIGHTINGS: dict[str, Weighting] = {
    "confidence": Weighting(_as_confidence),
    "uniform": Weighting(_uniform),
    "top_n": Weighting(top_n_weights, dataset_level=True),
}
"""Per-pair weightings by config name (Table 5 of CW-PO). Register a new one here."""

_REFERENCE_METHODS = {
    "adapter_disabled": "_reference_from_base",
    "separate": "_reference_from_separate_model",
    "precomputed": "_reference_from_cache",
}

# Objective keyword arguments a config may set; each objective receives the ones its signature names.
_OBJECTIVE_PARAMS = ("beta", "tau", "epsilon")


class PolicyModule(L.LightningModule):
    """Preference optimisation of the strong model with confidence weights, against a frozen reference.

    Args:
        backbone: the strong model's base (hub name, local folder, or a config for random init).
        lora: LoRA settings (paper: r = 8, α = 16, dropout 0.05); ``None`` for full fine-tuning (then
            ``reference`` cannot be ``adapter_disabled``).
        optim: optimiser and schedule.
        objective: a key of ``cwpo.losses.OBJECTIVES``: ``dpo`` (Eq. 9), ``ipo`` (Eq. 10), ``rdpo`` (Eq. 11).
        beta: β of DPO/rDPO (paper: most likely 0.5); also the scale of the logged implicit rewards
            ``β · log-ratio`` for every objective.
        tau: τ of IPO; the loss is minimal at ``h = 1/(2τ)``.
        epsilon: ε of rDPO, the assumed label-flip rate, 0 ≤ ε < 0.5.
        ipo_length_normalize: divide each log-ratio by its response's token count before IPO's square (the usual
            practical IPO); applies to objectives that take lengths (IPO), ignored by the others.
        weighting: a key of :data:`WEIGHTINGS`: ``confidence`` (CW-PO), ``uniform`` (plain), ``top_n``.
        top_n_fraction: share of the most confident pairs kept by ``weighting="top_n"`` (paper: 0.3-0.4).
        reduction: ``mean`` (``Σ c·ℓ / b``, default) or ``normalized`` (``Σ c·ℓ / Σ c``); see ``weighted_loss``.
        reference: ``adapter_disabled``, ``separate`` or ``precomputed`` (see the module docstring).
        reference_cache_dir: folder of precomputed reference log-probs (default ``<default_root_dir>/reference_cache``).
        reference_batch_size: batch size of the precompute pass (default: the train loader's).
        logps_impl: ``logits`` (``sequence_logps`` on full logits) or ``hidden`` (LM head on response rows only).
        init_adapter: the SFT adapter folder, merged into the base before the new LoRA is added, so that the
            starting policy and the reference are the SFT model.
        gradient_checkpointing: non-reentrant activation checkpointing of the policy.
        disable_dropout: switch off the base model's dropout (LoRA dropout stays), so policy and reference
            log-probs are not noisy.
        export_dir: write the adapter in PEFT format (+ model card) here at the end of ``fit``.
        export_merged: also write merged weights to ``<export_dir>/merged``.
        prefix_sharing: batches are prefix-sharing ones (``PairDataModule(prefix_sharing=True)``): one
            ``prompt + chosen + rejected`` row per pair, the prompt encoded once (``cwpo.modules.prefix``). A model
            that cannot take it falls back to two rows per pair, with a warning.
    """

    def __init__(
        self,
        backbone: ModelSpec,
        lora: LoraSpec | None = LoraSpec(),  # noqa: B008 - config default, never mutated
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        objective: str = "dpo",
        beta: float = 0.1,
        tau: float = 0.1,
        epsilon: float = 0.1,
        ipo_length_normalize: bool = True,
        weighting: str = "confidence",
        top_n_fraction: float = 0.3,
        reduction: str = "mean",
        reference: str = "adapter_disabled",
        reference_cache_dir: str | None = None,
        reference_batch_size: int | None = None,
        logps_impl: str = "logits",
        init_adapter: str | None = None,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        export_dir: str | None = None,
        export_merged: bool = False,
        prefix_sharing: bool = False,
    ) -> None:
        super().__init__()
        lora, optim = as_config(lora, LoraSpec), as_config(optim, OptimConfig)
        objective_fn = get_objective(objective)  # ConfigError listing the registered ones
        check_choice("weighting", weighting, WEIGHTINGS)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("reference", reference, REFERENCE_MODES)
        check_choice("logps_impl", logps_impl, LOGPS_IMPLS)
        if not 0.0 <= top_n_fraction <= 1.0:
            raise ConfigError(f"top_n_fraction must be in [0, 1], got {top_n_fraction}")
        if reference == "adapter_disabled" and lora is None:
            raise ConfigError("reference='adapter_disabled' needs a LoRA adapter; use 'separate' or 'precomputed'")
        if export_merged and (export_dir is None or lora is None):
            raise ConfigError("export_merged needs export_dir and a LoRA adapter (lora is not None)")
        accepted = inspect.signature(objective_fn).parameters
        values = {"beta": beta, "tau": tau, "epsilon": epsilon}
        self._objective_kwargs = {name: values[name] for name in _OBJECTIVE_PARAMS if name in accepted}
        self._length_normalize = ipo_length_normalize and "chosen_lengths" in accepted
        # Let the objective check its own parameters now (e.g. 0 <= epsilon < 0.5), not at the first step.
        objective_fn(torch.zeros(1), torch.zeros(1), **self._objective_kwargs)
        self.save_hyperparameters()
        plain_hparams(self.hparams)
        # Typed copies: under LightningCLI ``hparams`` holds the parsed config as plain dicts.
        self.backbone = as_model_spec(backbone)
        self.lora, self.optim = lora, optim
        self.policy: nn.Module | None = None
        self.reference_model: nn.Module | None = None
        # Per-stage tables by dataset row (reference log-probs (n, 2), dataset-level weights (n,)); built at fit
        # start, not saved in checkpoints (the disk cache and the data rebuild them).
        self._tables: dict[str, dict[str, torch.Tensor]] = {}

    # ---------------------------------------------------------------------------------------------------------- model

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        self._hf_zero3 = hf_zero3_config(self._trainer)  # must outlive the models: transformers keeps a weak ref
        self.policy = build_causal_lm(
            self.backbone,
            lora=self.lora,
            init_adapter=hp.init_adapter,
            gradient_checkpointing=hp.gradient_checkpointing,
            no_dropout=hp.disable_dropout,
        )
        if hp.reference == "separate":
            self.reference_model = build_causal_lm(self.backbone, init_adapter=hp.init_adapter, trainable=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference_model is not None:
            self.reference_model.eval()  # Lightning switches the whole module to train mode each epoch
        return self

    def pair_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> PairLogps:
        """Pair batch → chosen/rejected log-probs and token counts (one forward of ``2b`` rows). Swap point."""
        impl = self.hparams.logps_impl
        return pair_logps_of_batch(
            model,
            batch,
            prefix_sharing=self.hparams.prefix_sharing,
            logps_impl=impl,
            two_row_logps=lambda model, pair_batch: pair_logps(model, pair_batch, impl=impl),
        )

    # ------------------------------------------------------------------------------------------------------ reference

    def reference_logps(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ref_chosen_logps, ref_rejected_logps)`` of the batch, from the configured reference. Shapes (b,), (b,)."""
        return getattr(self, _REFERENCE_METHODS[self.hparams.reference])(batch, stage)

    def _reference_from_base(self, batch: dict[str, torch.Tensor], stage: str = "train"):
        """The policy's own base: LoRA adapter disabled (the SFT model), eval mode, no grad."""
        adapter_off = self.policy.disable_adapter() if self.lora is not None else contextlib.nullcontext()
        with torch.no_grad(), adapter_off, eval_mode(self.policy):
            logps = self.pair_logps(self.policy, batch)
        return logps.chosen_logps, logps.rejected_logps

    def _reference_from_separate_model(self, batch: dict[str, torch.Tensor], stage: str):
        with torch.no_grad():
            logps = self.pair_logps(self.reference_model, batch)
        return logps.chosen_logps, logps.rejected_logps

    def _reference_from_cache(self, batch: dict[str, torch.Tensor], stage: str):
        if "ref_chosen_logps" in batch and "ref_rejected_logps" in batch:
            return batch["ref_chosen_logps"].float(), batch["ref_rejected_logps"].float()
        table = self._table(stage, "reference")[batch["index"]]
        return table[:, 0], table[:, 1]

    def _table(self, stage: str, name: str) -> torch.Tensor:
        try:
            return self._tables[stage][name]
        except KeyError:
            raise ConfigError(
                f"no precomputed {name} table for stage {stage!r}: reference='precomputed' and weighting='top_n' "
                "build them at fit start from the trainer's LightningDataModule (or the batches must carry "
                "ref_chosen_logps/ref_rejected_logps); call prepare_tables() when stepping by hand"
            ) from None

    def set_table(self, stage: str, name: str, table: torch.Tensor) -> None:
        """Install a per-row table (``reference``: (n, 2) log-probs; ``weights``: (n,)) for ``stage``."""
        self._tables.setdefault(stage, {})[name] = table.to(self.device)

    # ------------------------------------------------------------------------------------------------------- weights

    def pair_weights(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Per-pair weights ``c`` of the batch. Shape (b,)."""
        weighting = WEIGHTINGS[self.hparams.weighting]
        if weighting.dataset_level:
            return self._table(stage, "weights")[batch["index"]]
        confidence = batch.get("weights")
        if confidence is None:
            confidence = torch.ones(num_pairs(batch), device=batch["input_ids"].device)
        return weighting.fn(confidence.float(), self.hparams.top_n_fraction)

    # ------------------------------------------------------------------------------------------------------ the loss

    def compute_loss(self, batch: dict[str, torch.Tensor], stage: str = "train") -> tuple[torch.Tensor, dict[str, Any]]:
        """The weighted batch loss (Eq. 7) and detached metrics, without any host sync."""
        policy = self.pair_logps(self.policy, batch)
        ref_chosen, ref_rejected = self.reference_logps(batch, stage)
        chosen_logratios = policy.chosen_logps - ref_chosen
        rejected_logratios = policy.rejected_logps - ref_rejected
        kwargs = dict(self._objective_kwargs)
        if self._length_normalize:
            kwargs.update(chosen_lengths=policy.chosen_counts, rejected_lengths=policy.rejected_counts)
        per_pair = get_objective(self.hparams.objective)(chosen_logratios, rejected_logratios, **kwargs)
        weights = self.pair_weights(batch, stage)
        loss = weighted_loss(per_pair, weights, self.hparams.reduction)

        chosen_rewards = self.hparams.beta * chosen_logratios.detach()
        rejected_rewards = self.hparams.beta * rejected_logratios.detach()
        correct = (chosen_rewards > rejected_rewards).float()
        weights = weights.detach().float()
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": correct.mean(),
            # Σ c·1[h > 0] / Σ c; the clamp keeps an all-zero-weight batch at 0 instead of NaN, without a sync.
            "rewards/weighted_accuracies": (weights * correct).sum() / weights.sum().clamp_min(1e-12),
            "weights/mean": weights.mean(),
        }
        return loss, metrics

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch, stage)
        pairs = num_pairs(batch)
        prefix = "" if stage == "train" else f"{stage}/"
        sync = stage != "train"
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, batch_size=pairs, sync_dist=sync)
        for name, value in metrics.items():
            self.log(prefix + name, value, batch_size=pairs, sync_dist=sync)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return configure_optimizers(self, self.optim)

    def configure_callbacks(self):
        return [ResumeState()]  # random states and loader position in checkpoints (cwpo.modules.resume)

    # ------------------------------------------------------------------------------------------ per-row tables (fit)

    def on_fit_start(self) -> None:
        self.prepare_tables(("train", "val"))

    def on_validation_start(self) -> None:
        self.prepare_tables(("val",))  # for trainer.validate() alone; a no-op inside fit

    def prepare_tables(self, stages: tuple[str, ...]) -> None:
        """Build the per-row tables the configuration needs (reference log-probs, top-N weights) for ``stages``.

        Reads the datasets behind the trainer's datamodule's dataloaders; does nothing for a configuration that
        needs no table or when there is no datamodule (then batches must carry ``ref_*_logps``).
        """
        needs_reference = self.hparams.reference == "precomputed"
        weighting = WEIGHTINGS[self.hparams.weighting]
        datamodule = self.trainer.datamodule
        if not (needs_reference or weighting.dataset_level) or datamodule is None:
            return
        for stage in stages:
            if stage in self._tables:
                continue
            loader = self._stage_dataloader(datamodule, stage)
            if loader is None:
                continue
            if needs_reference:
                self.set_table(stage, "reference", self._precompute_reference(loader))
            if weighting.dataset_level:
                confidence = collect_by_index(
                    _plain_batches(loader), _batch_confidence, len(loader.dataset), grad_mode=contextlib.nullcontext
                )[:, 0]
                self.set_table(stage, "weights", weighting.fn(confidence, self.hparams.top_n_fraction))

    def _stage_dataloader(self, datamodule, stage: str):
        hook = {"train": "train_dataloader", "val": "val_dataloader"}[stage]
        if not is_overridden(hook, datamodule, L.LightningDataModule):
            return None
        if stage == "val" and not self.trainer.limit_val_batches:
            return None
        try:
            loader = getattr(datamodule, hook)()
        except ConfigError:
            if stage == "train":
                raise
            return None  # cwpo.data's datamodules refuse val_dataloader() without a val_part
        if isinstance(loader, (list, tuple)):
            if len(loader) != 1:
                raise ConfigError(f"per-row tables support one {stage} dataloader, got {len(loader)}")
            loader = loader[0]
        return loader

    def _precompute_reference(self, loader) -> torch.Tensor:
        from cwpo.modules.export import adapter_identity

        trainer = self.trainer
        hp = self.hparams
        zero3 = any(is_zero3_param(p) for p in self.policy.parameters())
        cache_dir = hp.reference_cache_dir or str(Path(trainer.default_root_dir) / "reference_cache")
        return cached_reference_logps(
            loader,
            self._reference_from_base,
            cache_dir=cache_dir,
            model_identity=self.backbone.identity(),
            init_adapter=adapter_identity(hp.init_adapter),
            tokenization=tokenization_settings(trainer.datamodule),
            precision=str(trainer.precision),
            logps_impl=hp.logps_impl,
            batch_size=hp.reference_batch_size,
            move_batch=trainer.strategy.batch_to_device,
            forward_context=trainer.precision_plugin.forward_context,
            # ZeRO-3 writes gathered weights into parameters: inference tensors there break later steps.
            grad_mode=torch.no_grad if zero3 else torch.inference_mode,
            is_global_zero=trainer.is_global_zero,
            broadcast=trainer.strategy.broadcast,
            barrier=trainer.strategy.barrier,
            # Without LoRA the policy is the reference only before its first step.
            may_compute=self.lora is not None or trainer.ckpt_path is None,
        )

    # -------------------------------------------------------------------------------------------------------- export

    def save_adapter(self, out_dir: str) -> None:
        """Write the LoRA adapter in PEFT format (+ model card; gathered under ZeRO-3), merged weights if asked."""
        from cwpo.modules.export import export_trained

        trainer = self._trainer
        export_trained(
            self.policy,
            out_dir,
            backbone=self.backbone,
            init_adapter=self.hparams.init_adapter,
            hparams=dict(self.hparams),
            title=f"cwpo policy ({self.hparams.objective.upper()}, {self.hparams.weighting} pair weights)",
            merged=self.hparams.export_merged,
            is_global_zero=trainer.is_global_zero if trainer is not None else True,
            barrier=trainer.strategy.barrier if trainer is not None else None,
        )

    def on_fit_end(self) -> None:
        # A fast_dev_run checks the code path only: it never writes (over) an export.
        if self.hparams.export_dir and not self.trainer.fast_dev_run:
            self.save_adapter(self.hparams.export_dir)


def _plain_batches(loader):
    """The loader's dataset and collator in order, without shuffling or workers (for offline passes)."""
    from torch.utils.data import DataLoader

    size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 1
    return DataLoader(loader.dataset, batch_size=size, shuffle=False, collate_fn=loader.collate_fn)


def _batch_confidence(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's confidences as a (b, 1) column (ones when the dataset has no ``confidence``)."""
    weights = batch.get("weights")
    if weights is None:
        weights = torch.ones(batch["index"].shape[0])
    return weights.float()[:, None]
