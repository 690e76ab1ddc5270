"""Online CW-DPO (appendix J.5 of CW-PO): preference pairs sampled from the policy itself, labelled by the weak
annotator at every step.

Per training step, for a batch of prompts:

1. the policy (eval mode, no grad) samples two responses per prompt;
2. the weak annotator scores both; the higher score is ``y_w`` (Eq. 6) and ``c = confidence(Δ)`` (Eq. 8);
3. one (confidence-weighted) DPO / IPO / rDPO step on these pairs, exactly as :class:`PolicyModule` does
   offline (same objectives, weightings of a batch, reference modes that need no precomputed table).

The paper finds this worse than offline CW-DPO: the annotator was trained on the offline pairs and the policy's
samples drift away from them. ``monitor_judge`` makes that visible on tasks with a cheap gold judge: it logs how
often the annotator's order agrees with the judge's on the pairs it labels (``online/gold_agreement``).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch

from cwpo.errors import ConfigError, CwpoError
from cwpo.losses import confidence_from_margin
from cwpo.models import LoraSpec, ModelSpec
from cwpo.modules.causal_lm import eval_mode
from cwpo.modules.optim import OptimConfig
from cwpo.modules.policy import PolicyModule

# Schemes that map one pair's |Δ| to its c on its own; ``rank``/``minmax`` need the whole dataset's margins.
BATCH_LOCAL_SCHEMES = ("cw", "sigmoid", "margin", "uniform")


def annotator_tokenizer(annotator, max_length: int = 512, chat_template_for_text: bool = False):
    """The annotator's :class:`~cwpo.data.tokenization.PairTokenizer` for online pairs: ``keep_end`` truncation, so
    every pair gets a score (the prompt keeps at least half of ``max_length`` before the responses are cut)."""
    from cwpo.data import TokenizeConfig
    from cwpo.data.tokenization import PairTokenizer

    config = TokenizeConfig(max_length=max_length, truncation="keep_end", min_prompt_tokens=max(1, max_length // 2),
                            chat_template_for_text=chat_template_for_text)  # fmt: skip
    return PairTokenizer(annotator.tokenizer, config)


def annotator_scores(
    annotator,
    pair_tokenizer,
    prompts: Sequence[Any],
    responses_1: Sequence[str],
    responses_2: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weak annotator's scores of two responses to each prompt.

    Args:
        annotator: a loaded annotator module (:func:`cwpo.annotation.load_annotator`).
        pair_tokenizer: from :func:`annotator_tokenizer` (built once, reused every step).
        prompts: text or chat messages, one per pair.
        responses_1: first responses. responses_2: second responses.

    Returns:
        ``(score_1, score_2)``, float32 on the annotator's device. Shapes (n,), (n,).
    """
    from cwpo.data import PairCollator

    prompt_ids, responses, _ = pair_tokenizer.encode_batch(list(prompts), {"chosen": list(responses_1),
                                                                           "rejected": list(responses_2)})  # fmt: skip
    features = []
    for row, (ids, first, second) in enumerate(
        zip(prompt_ids, responses["chosen"], responses["rejected"], strict=True)
    ):
        ids, fitted, dropped = pair_tokenizer.fit_budget(ids, {"chosen": first, "rejected": second})
        if dropped is not None:
            budget = pair_tokenizer.config.max_length
            raise CwpoError(f"online pair {row}: cannot fit prompt and responses in {budget} tokens ({dropped})")
        features.append({"prompt_ids": ids, "chosen_ids": fitted["chosen"], "rejected_ids": fitted["rejected"]})
    batch = PairCollator(pad_token_id=annotator.tokenizer.pad_token_id)(features)
    device = next(annotator.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad(), eval_mode(annotator):
        return annotator.score(batch)


class OnlinePolicyModule(PolicyModule):
    """Online (confidence-weighted) preference optimisation: on-policy pairs labelled by the weak annotator.

    Takes prompt batches (:class:`cwpo.data.PromptDataModule`, left padded); everything else is
    :class:`PolicyModule`'s (see there for the shared arguments). The annotator is not trained, not saved in
    checkpoints and not counted among the module's parameters.

    Args:
        annotator: the weak annotator: a folder from ``export_annotator``, a ``.ckpt``, or a loaded module.
        confidence: confidence scheme of the annotator's margin (one of :data:`BATCH_LOCAL_SCHEMES`).
        max_new_tokens: tokens sampled per response.
        temperature: sampling temperature (> 0: two greedy samples would be the same response).
        top_p: nucleus mass.
        sample_seed: base seed of the sampling; each (epoch, prompt, sample) draws from its own seed, so a run is
            reproducible and a resumed run samples what the uninterrupted one would have.
        annotator_max_length: the annotator's token budget of prompt + response.
        chat_template_for_text: render text prompts through the annotator tokenizer's chat template.
        monitor_judge: optional gold judge config (``{"kind": "synthetic_gold"}`` or as for ``load_judge``) to log
            the annotator's agreement with it on the sampled pairs.
    """

    def __init__(
        self,
        backbone: ModelSpec,
        annotator: Any,
        lora: LoraSpec | None = LoraSpec(),  # noqa: B008 - config default, never mutated
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        objective: str = "dpo",
        beta: float = 0.1,
        tau: float = 0.1,
        epsilon: float = 0.1,
        ipo_length_normalize: bool = True,
        weighting: str = "confidence",
        confidence: str = "cw",
        reduction: str = "mean",
        reference: str = "adapter_disabled",
        logps_impl: str = "logits",
        init_adapter: str | None = None,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        export_dir: str | None = None,
        export_merged: bool = False,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        sample_seed: int = 0,
        annotator_max_length: int = 512,
        chat_template_for_text: bool = False,
        monitor_judge: dict[str, Any] | None = None,
    ) -> None:
        if reference == "precomputed":
            raise ConfigError("online preference optimisation samples new responses every step: a precomputed "
                              "reference cannot exist; use reference='adapter_disabled' or 'separate'")  # fmt: skip
        if weighting not in ("confidence", "uniform"):
            raise ConfigError(f"online weighting must be 'confidence' or 'uniform' (per batch), got {weighting!r}")
        if confidence not in BATCH_LOCAL_SCHEMES:
            raise ConfigError(f"online confidence scheme must be one of {BATCH_LOCAL_SCHEMES} (rank and minmax need "
                              f"the whole dataset's margins), got {confidence!r}")  # fmt: skip
        if temperature <= 0:
            raise ConfigError(
                f"online sampling needs temperature > 0 (two greedy samples are identical), got {temperature}"
            )
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        super().__init__(
            backbone,
            lora=lora,
            optim=optim,
            objective=objective,
            beta=beta,
            tau=tau,
            epsilon=epsilon,
            ipo_length_normalize=ipo_length_normalize,
            weighting=weighting,
            reduction=reduction,
            reference=reference,
            logps_impl=logps_impl,
            init_adapter=init_adapter,
            gradient_checkpointing=gradient_checkpointing,
            disable_dropout=disable_dropout,
            export_dir=export_dir,
            export_merged=export_merged,
        )
        # Under LightningCLI ``hparams`` hold this class's parsed arguments only: add the settings it leaves to the
        # parent at their defaults, which the parent's methods read.
        for name, parameter in inspect.signature(PolicyModule.__init__).parameters.items():
            if name != "self" and name not in self.hparams:
                self.hparams[name] = parameter.default
        if not isinstance(annotator, str | os.PathLike):
            self.hparams.pop("annotator", None)  # a module object is no hyper-parameter: checkpoints stay plain data
        # Kept out of the module tree (object.__setattr__): never trained, checkpointed or moved by Lightning.
        object.__setattr__(self, "_annotator_source", annotator)
        object.__setattr__(self, "_annotator", None)
        self._prompts: list[Any] | None = None
        self._judge = None

    # ---------------------------------------------------------------------------------------------- collaborators

    @property
    def annotator(self):
        """The weak annotator (loaded on first use, on this module's device, in eval mode)."""
        if self._annotator is None:
            from cwpo.annotation import load_annotator

            object.__setattr__(self, "_annotator", load_annotator(self._annotator_source))
        if next(self._annotator.parameters()).device != self.device:
            self._annotator.to(self.device)
        return self._annotator.eval()

    @functools.cached_property
    def annotator_tokenizer(self):
        """How the annotator reads a pair (built once)."""
        hp = self.hparams
        return annotator_tokenizer(self.annotator, hp.annotator_max_length, hp.chat_template_for_text)

    @functools.cached_property
    def tokenizer(self):
        from cwpo.models import load_tokenizer

        return load_tokenizer(self.backbone)

    @functools.cached_property
    def _eos_ids(self) -> list[int]:
        from cwpo.evaluation.generate import eos_token_ids

        return eos_token_ids(self.policy, self.tokenizer)

    def set_prompts(self, prompts: Sequence[Any]) -> None:
        """The prompts (text or messages) behind the batches' ``index`` (set at fit start from the datamodule)."""
        self._prompts = list(prompts)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if self._prompts is None:
            dataset = getattr(datamodule, "train_dataset", None)
            if dataset is None or "prompt" not in dataset.column_names:
                raise ConfigError("online training needs the prompts' text: use a PromptDataModule, or set_prompts()")
            self.set_prompts(dataset["prompt"])
        judge = self.hparams.monitor_judge
        if judge is not None and self._judge is None:
            from cwpo.evaluation.judges import load_judge

            settings = dict(judge)
            self._judge = load_judge(settings.pop("kind"), settings.pop("spec", None), **settings)

    # ------------------------------------------------------------------------------------------------- sampling

    def sample_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Two sampled responses per prompt, ordered by the annotator: a pair batch for ``compute_loss``.

        Returns:
            The pair batch (``2b`` rows, chosen first, with ``weights`` = c) and what was sampled (texts, margins).
        """
        from cwpo.data.collate import pad_sequences
        from cwpo.evaluation.generate import (
            GenerationConfig,
            decode_completions,
            hf_generation_config,
            prompt_seed,
            sampling_processors,
        )

        hp = self.hparams
        if self._prompts is None:
            raise ConfigError("online training needs the prompts' text: call set_prompts() (done at fit start)")
        tokenizer = self.tokenizer
        index = batch["index"].tolist()
        prompts = [self._prompts[i] for i in index]
        config = GenerationConfig(max_new_tokens=hp.max_new_tokens, temperature=hp.temperature, top_p=hp.top_p,
                                  progress=False)  # fmt: skip
        base = prompt_seed(hp.sample_seed, self.current_epoch)
        seeds = [prompt_seed(base, 2 * i + k) for i in index for k in (0, 1)]
        eos_ids = self._eos_ids
        input_ids = batch["input_ids"].repeat_interleave(2, dim=0)
        attention_mask = batch["attention_mask"].repeat_interleave(2, dim=0)
        with torch.no_grad(), eval_mode(self.policy):
            sequences = self.policy.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=hf_generation_config(config, eos_ids, tokenizer.pad_token_id),
                logits_processor=sampling_processors(config, seeds),
            )
        new_tokens = sequences[:, input_ids.shape[1] :]
        texts, counts = decode_completions(tokenizer, new_tokens, eos_ids)
        response_ids = [row[:count] for row, count in zip(new_tokens.tolist(), counts, strict=True)]
        prompt_ids = [
            row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]

        first, second = texts[0::2], texts[1::2]
        score_1, score_2 = annotator_scores(self.annotator, self.annotator_tokenizer, prompts, first, second)
        margin = (score_1 - score_2).float().cpu()
        identical = torch.tensor([a == b for a, b in zip(first, second, strict=True)])
        margin = margin.masked_fill(identical, 0.0)  # the same response is no preference at all
        swap = (margin < 0).tolist()
        chosen = [response_ids[2 * i + s] for i, s in enumerate(swap)]
        rejected = [response_ids[2 * i + 1 - s] for i, s in enumerate(swap)]
        pair_batch = pad_sequences(prompt_ids + prompt_ids, chosen + rejected, pad_token_id=tokenizer.pad_token_id)
        pair_batch["weights"] = confidence_from_margin(margin, hp.confidence).float()
        pair_batch["index"] = batch["index"].cpu()
        pair_batch = {k: v.to(self.device) for k, v in pair_batch.items()}
        sampled = {
            "prompts": prompts,
            "chosen": [second[i] if s else first[i] for i, s in enumerate(swap)],
            "rejected": [first[i] if s else second[i] for i, s in enumerate(swap)],
            "margin": margin,
            "identical": identical,
            "response_tokens": torch.tensor(counts, dtype=torch.float32),
        }
        return pair_batch, sampled

    # -------------------------------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pair_batch, sampled = self.sample_pairs(batch)
        loss = self._step(pair_batch, "train")
        pairs = len(sampled["prompts"])
        # Per step and as epoch means (``<name>_epoch``): how the sampled pairs and their labels evolve.
        epoch_too = {"on_step": True, "on_epoch": True}
        self.log("online/identical", sampled["identical"].float().mean(), batch_size=pairs, **epoch_too)
        self.log("online/response_tokens", sampled["response_tokens"].mean(), batch_size=pairs, **epoch_too)
        self.log("online/abs_margin", sampled["margin"].abs().mean(), batch_size=pairs, **epoch_too)
        if self._judge is not None:
            from cwpo.evaluation.judges import judge_compare

            gold = judge_compare(self._judge, sampled["prompts"], sampled["chosen"], sampled["rejected"]).float().cpu()
            decided = (gold != 0) & ~sampled["identical"]
            if bool(decided.any()):
                agreement = (gold[decided] > 0).float().mean()
                self.log("online/gold_agreement", agreement, batch_size=int(decided.sum()), **epoch_too)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pair_batch, _ = self.sample_pairs(batch)
        return self._step(pair_batch, "val")
