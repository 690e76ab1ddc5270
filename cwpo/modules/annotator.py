"""The weak annotator of CW-PO (stage 1): a scalar-head reward model trained with the Bradley-Terry loss, and the
PairRM-style pairwise variant of appendix J.9.

Both read the pair batch of ``docs/ARCHITECTURE.md`` (rows ``0..b-1`` prompt + chosen, rows ``b..2b-1`` prompt +
rejected, right padded) and score a pair with one forward pass over ``2b`` rows. Both expose the same inference
API, so ``cwpo.annotate`` treats them alike:

- ``score(batch) -> (score_1, score_2)``, each of shape (b,), where the pair's margin is ``score_1 - score_2``
  and a positive margin prefers the batch's first response (its ``chosen`` column);
- ``predict_step`` returns ``{"index", "score_1", "score_2"}`` for Lightning's predict loop.

Pooling. ``pooling="auto"`` reads the score at the **last non-padding token** for decoder LMs and at the **first
token** for encoders. An architecture counts as an encoder when its ``model_type`` has a masked-LM head in
transformers (BERT, RoBERTa, DeBERTa, MiniLM, ModernBERT, ...) and its config does not say ``is_decoder``; every
other model is read as a decoder. Encoder-decoder models are refused (their classification heads pool at the
last EOS, which is neither rule).

- ``"last"``: the last position whose ``attention_mask`` is 1, computed here from the mask (never from
  ``pad_token_id``, so it is right with pad == EOS, and with left or right padding). Positions ids are taken from
  the mask too, so a left-padded row scores exactly like the same row unpadded. The head is the classifier's
  ``score`` linear layer applied to that one hidden state.
- ``"first"``: transformers' own sequence-classification forward, which for BERT-style models pools the first
  (``[CLS]``) token through the pretrained pooler.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch
from torchmetrics.classification import BinaryAccuracy

from cwpo.errors import ConfigError
from cwpo.losses import bt_loss, pairrm_loss, pairrm_score
from cwpo.models import ModelSpec, as_model_spec, load_sequence_classifier, load_tokenizer
from cwpo.modules.optim import OptimConfig, configure_optimizers
from cwpo.modules.resume import ResumeState

Pooling = Literal["auto", "last", "first"]

IGNORE_INDEX = -100

# The annotator's paper setting (appendix G: Adam, full fine-tune). The learning rate is not given in the paper.
DEFAULT_ANNOTATOR_OPTIM = OptimConfig(lr=1e-5, optimizer="adam", weight_decay=0.0, scheduler="linear", warmup_steps=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, for left- or right-padded rows.

    Args:
        attention_mask: 1 on real tokens, 0 on padding. Shape (n, T).

    Returns:
        Long indices. Shape (n,). A row with no real token gets ``T - 1``.
    """
    length = attention_mask.shape[-1]
    # argmax returns the first maximum: on the flipped mask that is the last 1 of the original row.
    from_end = torch.argmax(attention_mask.flip(-1).to(torch.int32), dim=-1)
    return (length - 1 - from_end).long()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so a left-padded row gets the positions of its unpadded self.

    Args:
        attention_mask: Shape (n, T).

    Returns:
        Long positions, 0 at each row's first real token; padding positions are clamped to 0. Shape (n, T).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def resolve_pooling(config: Any, pooling: str) -> str:
    """Turn ``pooling="auto"`` into ``"last"`` (decoders) or ``"first"`` (encoders); see the module docstring."""
    if pooling not in ("auto", "last", "first"):
        raise ConfigError(f"pooling must be 'auto', 'last' or 'first', got {pooling!r}")
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"encoder-decoder models ({config.model_type}) are not supported as annotator backbones")
    if pooling != "auto":
        return pooling
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    is_encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    return "first" if is_encoder else "last"


def _as_optim(optim: OptimConfig | dict | None) -> OptimConfig:
    if optim is None:
        return DEFAULT_ANNOTATOR_OPTIM
    if isinstance(optim, dict):  # from a checkpoint's plain hyper-parameters
        values = dict(optim)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return OptimConfig(**values)
    return optim


class _ScalarHeadModule(L.LightningModule):
    """What the BT and the PairRM annotators share: a sequence classifier with one output, pooled as documented."""

    annotator_type = "base"

    def __init__(self, backbone: ModelSpec, optim: OptimConfig | None, pooling: Pooling, gradient_checkpointing: bool):
        super().__init__()
        self.backbone = as_model_spec(backbone)
        self.optim = _as_optim(optim)
        if pooling not in ("auto", "last", "first"):
            raise ConfigError(f"pooling must be 'auto', 'last' or 'first', got {pooling!r}")
        self.pooling = pooling
        self.gradient_checkpointing = gradient_checkpointing
        self.model = None
        self._resolved_pooling: str | None = None
        self._head_accepts_positions = False
        self._tokenizer = None
        self.train_accuracy = BinaryAccuracy()
        self.val_accuracy = BinaryAccuracy()

    def _store_hparams(self, **extra: Any) -> None:
        # Plain values only, so a checkpoint loads with torch.load(weights_only=True) and no allow-list
        # (under LightningCLI, Lightning records the config instead; the keys below overwrite it with plain values).
        values = {
            "backbone": asdict(self.backbone),
            "optim": {**asdict(self.optim), "betas": list(self.optim.betas)},
            "pooling": self.pooling,
            "gradient_checkpointing": self.gradient_checkpointing,
            **extra,
        }
        self.save_hyperparameters(values)
        self.hparams.update(values)
        self.hparams["annotator_type"] = self.annotator_type

    def configure_model(self) -> None:
        """Build the backbone with a fresh one-output head. Idempotent: a second call keeps the built model."""
        if self.model is not None:
            return
        model = load_sequence_classifier(self.backbone, self.tokenizer, num_labels=1)
        self._resolved_pooling = resolve_pooling(model.config, self.pooling)
        if self._resolved_pooling == "last":
            if not isinstance(getattr(model, "score", None), torch.nn.Module):
                raise ConfigError(
                    f"{type(model).__name__} has no 'score' head: set pooling='first' to use transformers' own head"
                )
            params = inspect.signature(model.base_model.forward).parameters
            self._head_accepts_positions = "position_ids" in params
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        # from_pretrained returns a model in eval mode, and Lightning keeps each submodule's mode: without this a
        # pretrained backbone would train with its dropout off while a from-scratch one trains with it on.
        model.train(self.training)
        self.model = model

    @property
    def tokenizer(self):
        """The backbone's tokenizer (loaded once, on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone)
        return self._tokenizer

    @property
    def resolved_pooling(self) -> str:
        """``"last"`` or ``"first"``, known once the model is built."""
        if self._resolved_pooling is None:
            raise ConfigError("the model is not built yet: call configure_model() first")
        return self._resolved_pooling

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One scalar per row, read as described in the module docstring.

        Args:
            input_ids: Shape (n, T).
            attention_mask: 1 on real tokens. Shape (n, T).

        Returns:
            float32 scores. Shape (n,).
        """
        if self.model is None:
            self.configure_model()
        if self.resolved_pooling == "first":
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        kwargs = {}
        if self._head_accepts_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask).to(hidden.device)]
        return self.model.score(pooled)[:, 0].float()

    def _pair_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def score(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of a pair batch's two responses: ``(score_1, score_2)``, each of shape (b,).

        The margin ``score_1 - score_2 > 0`` prefers the first response (the batch's ``chosen`` rows).
        """
        return self._pair_scores(batch)

    def _loss(self, score_1: torch.Tensor, score_2: torch.Tensor, first_preferred: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        score_1, score_2 = self._pair_scores(batch)
        human_label = batch.get("human_label")
        # human_label = 0 says the human preferred the second response: the target flips, the maths does not.
        first_preferred = (
            torch.ones_like(score_1, dtype=torch.bool) if human_label is None else human_label.to(score_1.device) == 1
        )
        loss = self._loss(score_1, score_2, first_preferred).mean()
        margin = score_1 - score_2
        accuracy = self.train_accuracy if stage == "train" else self.val_accuracy
        accuracy.update((margin > 0).long().detach(), first_preferred.long())
        batch_size = score_1.shape[0]
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=stage != "train")
        self.log(f"{stage}/accuracy", accuracy, on_step=False, on_epoch=True, batch_size=batch_size)
        # Mean margin in the human's direction: grows while the annotator learns.
        signed_margin = torch.where(first_preferred, margin, -margin).detach().mean()
        key = "rewards/margins" if stage == "train" else f"{stage}/margins"
        self.log(key, signed_margin, batch_size=batch_size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``{"index": (b,), "score_1": (b,), "score_2": (b,)}`` for ``cwpo.annotate``."""
        score_1, score_2 = self._pair_scores(batch)
        return {"index": batch["index"], "score_1": score_1.detach(), "score_2": score_2.detach()}

    def configure_optimizers(self):
        return configure_optimizers(self, self.optim)

    def configure_callbacks(self):
        return [ResumeState()]  # random states and loader position in checkpoints (cwpo.modules.resume)


class AnnotatorModule(_ScalarHeadModule):
    """The weak annotator (stage 1 of CW-PO): ``r_φ(x, y)`` from a pretrained backbone with a scalar head, fully
    fine-tuned with the Bradley-Terry loss (Eq. 4-5) on the human-labelled pairs ``D_L``.

    Trains on the pair batch: one forward over the ``2b`` rows, ``r(chosen) = rows[:b]``, ``r(rejected) =
    rows[b:]``. A row with ``human_label = 0`` (the human preferred ``rejected``) is trained the other way round;
    the batch's ``weights`` are ignored (``D_L`` carries human labels, every pair counts once). Logs
    ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy`` (share of pairs whose score order agrees
    with the human label; a tie counts as preferring ``rejected``) and ``rewards/{train,val}_margins``.

    Args:
        backbone: the pretrained model (paper: OPT-125M, Qwen2.5-0.5B) or a config for random init; a fresh
            one-output head replaces its LM head.
        optim: optimiser and schedule; default Adam, lr 1e-5, linear decay (paper: Adam, 5 epochs, batch 32).
        pooling: where the score is read: ``auto`` (decoders: last real token; encoders: first token), ``last``
            or ``first``. See the module docstring.
        gradient_checkpointing: trade compute for memory in the backbone.
    """

    annotator_type = "bt"

    def __init__(
        self,
        backbone: ModelSpec,
        optim: OptimConfig | None = None,
        pooling: Pooling = "auto",
        gradient_checkpointing: bool = False,
    ):
        super().__init__(backbone, optim, pooling, gradient_checkpointing)
        self._store_hparams()

    def _pair_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = self.rewards(batch["input_ids"], batch["attention_mask"])
        pairs = rewards.shape[0] // 2
        return rewards[:pairs], rewards[pairs:]

    def _loss(self, score_1: torch.Tensor, score_2: torch.Tensor, first_preferred: torch.Tensor) -> torch.Tensor:
        preferred = torch.where(first_preferred, score_1, score_2)
        dispreferred = torch.where(first_preferred, score_2, score_1)
        return bt_loss(preferred, dispreferred)


# The separators of PairRM (Jiang et al. 2023, llm-blender): plain text here, no new embeddings.
PAIRRM_SOURCE = "<|source|>"
PAIRRM_CANDIDATE1 = "<|candidate1|>"
PAIRRM_CANDIDATE2 = "<|candidate2|>"


class PairRMModule(_ScalarHeadModule):
    """The PairRM-style weak annotator (appendix J.9 of CW-PO): one model reads the prompt with both responses,

        ``<|source|> {x} <|candidate1|> {y_a} <|candidate2|> {y_b}``

    and outputs a logit ``f(x, y_a, y_b)`` that ``y_a`` is preferred. Trained with ``pairrm_loss`` on both
    orders of each labelled pair (Eq. 20); a pair's score is ``f(x, y1, y2) - f(x, y2, y1)`` (MaxLogits), its
    confidence ``2σ(|score|) - 1`` (Eq. 21), computed by ``cwpo.annotate``.

    It takes the same pair batch as :class:`AnnotatorModule` and builds the triples itself, in token space, in
    ``on_before_batch_transfer`` (on the CPU, before the batch moves to the device): the prompt and the two
    responses are recovered from ``labels`` (``-100`` on prompt tokens), each part is truncated to its budget
    (the prompt keeps its end, a response its beginning), a leading BOS/CLS stays first, trailing EOS/SEP of the
    responses are dropped and one is appended at the end. The separators are tokenised as plain text (no new
    vocabulary, so no resized embeddings); a tokenizer that cannot spell them (the synthetic task's word-level one
    maps each to ``<unk>`` tokens) still marks where each part starts, and order tells the candidates apart. Rows ``0..b-1`` of the triple batch are ``(x, y1, y2)``, rows
    ``b..2b-1`` are ``(x, y2, y1)``, where ``y1`` is the pair batch's ``chosen`` response.

    ``score(batch)`` returns ``(f(x, y1, y2), f(x, y2, y1))``: their difference is the MaxLogits score, so the
    annotation columns ``weak_score_chosen - weak_score_rejected`` are the margin for both annotators.

    Args:
        backbone: the model that reads the triple (paper: Qwen2.5-0.5B), with a fresh one-output head.
        optim: optimiser and schedule, as for :class:`AnnotatorModule`.
        pooling: as for :class:`AnnotatorModule`.
        gradient_checkpointing: trade compute for memory in the backbone.
        max_prompt_tokens: budget of the prompt inside the triple (its last tokens are kept).
        max_response_tokens: budget of each response inside the triple (its first tokens are kept).
    """

    annotator_type = "pairrm"

    def __init__(
        self,
        backbone: ModelSpec,
        optim: OptimConfig | None = None,
        pooling: Pooling = "auto",
        gradient_checkpointing: bool = False,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 128,
    ):
        super().__init__(backbone, optim, pooling, gradient_checkpointing)
        if max_prompt_tokens < 1 or max_response_tokens < 1:
            raise ConfigError(
                f"PairRM budgets must be >= 1, got max_prompt_tokens={max_prompt_tokens}, "
                f"max_response_tokens={max_response_tokens}"
            )
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self._store_hparams(max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "triple_input_ids" not in batch:
            batch = dict(batch)
            batch["triple_input_ids"], batch["triple_attention_mask"] = build_triples(
                batch, self.tokenizer, self.max_prompt_tokens, self.max_response_tokens
            )
        return batch

    def _pair_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.on_before_batch_transfer(batch, 0)  # no-op inside the loops; builds triples when called directly
        device = self.device
        logits = self.rewards(batch["triple_input_ids"].to(device), batch["triple_attention_mask"].to(device))
        pairs = logits.shape[0] // 2
        return logits[:pairs], logits[pairs:]

    def _loss(self, score_1: torch.Tensor, score_2: torch.Tensor, first_preferred: torch.Tensor) -> torch.Tensor:
        # pairrm_loss wants (f(x, y_w, y_l), f(x, y_l, y_w)); for a human_label = 0 pair y_w is the second response.
        logits_wl = torch.where(first_preferred, score_1, score_2)
        logits_lw = torch.where(first_preferred, score_2, score_1)
        return pairrm_loss(logits_wl, logits_lw)

    def pair_margin(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The MaxLogits score ``f(x, y1, y2) - f(x, y2, y1)``. Shape (b,)."""
        return pairrm_score(*self._pair_scores(batch))


def _marker_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(f" {text} ", add_special_tokens=False)["input_ids"])


def build_triples(
    batch: dict[str, torch.Tensor], tokenizer, max_prompt_tokens: int, max_response_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PairRM inputs ``(x, y1, y2)`` and ``(x, y2, y1)`` from a pair batch (see :class:`PairRMModule`).

    Args:
        batch: a pair batch with ``input_ids``, ``attention_mask`` and ``labels``, each of shape (2b, T).
        tokenizer: the backbone's tokenizer (for the separators and the special tokens).
        max_prompt_tokens: the prompt's budget; its last tokens are kept.
        max_response_tokens: each response's budget; its first tokens are kept.

    Returns:
        ``input_ids`` and ``attention_mask`` of the triples, right padded with the tokenizer's pad id.
        Shape (2b, T') each.
    """
    input_ids = batch["input_ids"].cpu()
    mask = batch["attention_mask"].cpu().bool()
    labels = batch["labels"].cpu()
    pairs = input_ids.shape[0] // 2
    special = {t for t in (tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)) if t is not None}
    closing = {t for t in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)) if t is not None}
    end_token = (
        tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(tokenizer, "sep_token_id", None)
    )
    source, cand1, cand2 = (_marker_ids(tokenizer, m) for m in (PAIRRM_SOURCE, PAIRRM_CANDIDATE1, PAIRRM_CANDIDATE2))

    def parts(row: int) -> tuple[list[int], list[int], list[int]]:
        ids = input_ids[row][mask[row]].tolist()
        is_response = (labels[row][mask[row]] != IGNORE_INDEX).tolist()
        prompt = [t for t, r in zip(ids, is_response, strict=True) if not r]
        response = [t for t, r in zip(ids, is_response, strict=True) if r]
        head = prompt[:1] if prompt and prompt[0] in special else []
        prompt = prompt[len(head) :]
        while response and response[-1] in closing:
            response.pop()
        return head, prompt[-max_prompt_tokens:] if prompt else [], response[:max_response_tokens]

    firsts, seconds = [], []
    for i in range(pairs):
        head, prompt, chosen = parts(i)
        _, _, rejected = parts(pairs + i)
        tail = [end_token] if end_token is not None else []
        firsts.append(head + source + prompt + cand1 + chosen + cand2 + rejected + tail)
        seconds.append(head + source + prompt + cand1 + rejected + cand2 + chosen + tail)
    sequences = firsts + seconds
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    out_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        out_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        out_mask[row, : len(seq)] = 1
    return out_ids, out_mask
