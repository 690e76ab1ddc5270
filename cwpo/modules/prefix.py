"""Prefix sharing: chosen and rejected log-probs of a pair from ONE forward over ``prompt + chosen + rejected``.

The batch comes from :class:`cwpo.data.prefix_collate.PrefixPairCollator`. The model gets a 4D additive attention
mask (:func:`prefix_attention_mask`) in which a rejected token sees the prompt and the earlier rejected tokens only,
and ``position_ids`` that restart after the prompt for the rejected segment. Every hidden state is then the one the
model computes for the separate ``prompt + chosen`` or ``prompt + rejected`` sequence (to float rounding), while the
prompt is encoded once instead of twice. The response log-probs are taken from the hidden states of the predicting
positions only (:func:`cwpo.losses.response_logps_from_hidden`), so no ``(b, L, V)`` logits tensor is built.

Which models can take it (checked against transformers 5.24's sources, and tested in ``tests/modules/test_prefix.py``)
    ``create_causal_mask`` (``masking_utils._preprocess_mask_arguments``) returns a 4D mask unchanged, and both the
    ``eager`` (``attn_weights + attention_mask``) and the ``sdpa`` (``attn_mask=``) attention functions of the Llama,
    Qwen2 and OPT families use it as an additive float mask; Llama/Qwen2 take ``position_ids`` into RoPE, OPT into
    its learned position embedding (``position_ids`` given → the ``cumsum`` of the 2D mask is not used). So the mask
    is built as a float tensor (0 where allowed, the dtype's minimum elsewhere), which both accept (``eager`` would
    *add* a boolean mask). On CPU, SDPA runs its flash kernel with such a mask (``torch._fused_sdp_choice``), so no
    ``(b, heads, L, L)`` attention matrix is kept for the backward pass. Tested equal to two separate forwards:
    Llama, Qwen2, Qwen3, Mistral (no window), OPT, GPT-2 and Gemma, ``sdpa`` and ``eager``, on CPU (transformers
    5.24) and on CUDA in fp32 and bf16 (the ``gpu``-marked test; run on an H200 with transformers 5.17). Refused,
    with the reason (:func:`pair_logps_of_batch` then falls back to two rows per pair, with a warning):

    * attention implementations other than ``eager``/``sdpa`` (FlashAttention takes no dense mask; flex attention
      wants a ``BlockMask``);
    * sliding-window layers (a custom 4D mask replaces the window);
    * model families not in :data:`VERIFIED_MODEL_TYPES` (tested); pass ``allow_unverified=True`` to try another;
    * for ``logps_impl="hidden"``: heads that are not a plain linear map (logit soft-capping or scaling, or a
      PEFT adapter on the LM head); ``logps_impl="logits"`` handles those through the model's own head.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from cwpo.data.prefix_collate import CHOSEN, PADDING, REJECTED
from cwpo.errors import ConfigError
from cwpo.losses import response_logps_from_hidden, sequence_logps

VERIFIED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "opt", "gpt2", "gemma"})
"""Families whose prefix-shared log-probs are tested equal to two separate forwards."""

LOGPS_IMPLS = ("hidden", "logits")


class PairLogps(NamedTuple):
    """Summed response log-probs and response token counts of a batch of pairs. Each shape (b,)."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_counts: torch.Tensor
    rejected_counts: torch.Tensor


def unwrap_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForCausalLM`` inside a PEFT wrapper (adapter layers stay injected), or ``model`` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _text_config(model: torch.nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def prefix_sharing_unsupported_reason(
    model: torch.nn.Module, logps_impl: str = "hidden", *, allow_unverified: bool = False
) -> str | None:
    """Why ``model`` cannot run the prefix-sharing forward, or None when it can (see the module docstring)."""
    if logps_impl not in LOGPS_IMPLS:
        return f"unknown logps_impl {logps_impl!r}; valid: {', '.join(LOGPS_IMPLS)}"
    causal_lm = unwrap_causal_lm(model)
    config = _text_config(causal_lm)
    model_type = getattr(config, "model_type", None)
    if not allow_unverified and model_type not in VERIFIED_MODEL_TYPES:
        return (
            f"model type {model_type!r} is not verified for prefix sharing (verified: "
            f"{', '.join(sorted(VERIFIED_MODEL_TYPES))}); pass allow_unverified=True to try it"
        )
    attn = getattr(causal_lm.config, "_attn_implementation", None)
    if attn not in (None, "eager", "sdpa"):
        return f"attention implementation {attn!r} cannot take a custom 4D mask; use 'sdpa' or 'eager'"
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        sliding = any("sliding" in str(kind) for kind in layer_types)
    else:  # Mistral-style: one window for every layer when ``sliding_window`` is set
        sliding = getattr(config, "sliding_window", None) is not None
    if sliding:
        return "sliding-window attention layers would lose their window under a custom 4D mask"
    if logps_impl == "hidden":
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
            if getattr(config, name, None) not in (None, 1, 1.0):
                return f"the LM head applies {name}; use logps_impl='logits'"
        head = causal_lm.get_output_embeddings()
        if type(head) is not torch.nn.Linear:
            return f"the LM head is a {type(head).__name__}, not a plain Linear (an adapter on it?); use logps_impl='logits'"
        if hasattr(head.weight, "ds_id"):
            return "the LM head is partitioned by DeepSpeed ZeRO-3; use logps_impl='logits'"
    return None


def check_prefix_sharing(model: torch.nn.Module, logps_impl: str = "hidden", *, allow_unverified: bool = False) -> None:
    """Raise :class:`ConfigError` when ``model`` cannot run the prefix-sharing forward."""
    reason = prefix_sharing_unsupported_reason(model, logps_impl, allow_unverified=allow_unverified)
    if reason is not None:
        raise ConfigError(f"prefix sharing is not available for {type(unwrap_causal_lm(model)).__name__}: {reason}")


def prefix_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4D additive mask of prefix-shared rows: causal, no padding keys, rejected queries blind to chosen keys.

    A padding query attends to itself only, so no row of the softmax is empty (its output is never used).

    Args:
        segment_ids: ``PROMPT``/``CHOSEN``/``REJECTED``/``PADDING`` per position. Shape (b, L).
        dtype: the model's compute dtype (the mask is added to the attention scores).

    Returns:
        0 where a query may attend to a key, ``torch.finfo(dtype).min`` elsewhere. Shape (b, 1, L, L).
    """
    length = segment_ids.shape[1]
    positions = torch.arange(length, device=segment_ids.device)
    causal = positions[None, :] <= positions[:, None]  # (L, L): key index <= query index
    is_real = segment_ids != PADDING
    both_real = is_real[:, :, None] & is_real[:, None, :]
    rejected_query = (segment_ids == REJECTED)[:, :, None]
    chosen_key = (segment_ids == CHOSEN)[:, None, :]
    allowed = causal & both_real & ~(rejected_query & chosen_key)
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def prefix_pair_logps(
    model: torch.nn.Module,
    batch: dict[str, Any],
    *,
    logps_impl: str = "hidden",
    chunk_size: int = 1024,
    ignore_index: int = -100,
) -> PairLogps:
    """Chosen and rejected summed response log-probs of a prefix-sharing batch, from one forward.

    Differentiable w.r.t. the model's trainable parameters (e.g. LoRA adapters); run it under ``torch.no_grad()``
    (and with the adapter disabled) for reference log-probs. No host sync beyond what
    :func:`cwpo.losses.response_logps_from_hidden` needs to select the response rows (none on CPU).

    Args:
        model: a causal LM, optionally wrapped by PEFT, that passes :func:`check_prefix_sharing`.
        batch: a :class:`~cwpo.data.prefix_collate.PrefixPairCollator` batch (``input_ids``, ``position_ids``,
            ``segment_ids``, ``response_index``, ``response_labels``), on the model's device.
        logps_impl: ``"hidden"``: the LM head runs on the predicting positions only (no ``(b, L, V)`` tensor);
            ``"logits"``: the model's own head builds the full logits, then the predicting positions are gathered.
        chunk_size: rows per LM-head chunk (``hidden``) or positions per chunk (``logits``).
        ignore_index: the label of unscored positions in ``response_labels``.

    Returns:
        :class:`PairLogps`; log-probs float32 (float64 for a float64 model), counts int64. Shapes (b,).
    """
    check_prefix_sharing(model, logps_impl, allow_unverified=True)
    causal_lm = unwrap_causal_lm(model)
    input_ids = batch["input_ids"]
    batch_size, length = input_ids.shape
    attention_mask = prefix_attention_mask(batch["segment_ids"], _model_dtype(causal_lm))
    response_index, response_labels = batch["response_index"], batch["response_labels"]
    if logps_impl == "hidden":
        outputs = causal_lm.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=batch["position_ids"], use_cache=False
        )
        hidden = outputs.last_hidden_state
        # (2b, S+1, H): for each response, the hidden states that predict its tokens, in order.
        response_hidden = hidden.reshape(batch_size * length, hidden.shape[-1])[response_index]
        head = causal_lm.get_output_embeddings()
        logps, counts = response_logps_from_hidden(
            response_hidden,
            head.weight,
            response_labels,
            lm_head_bias=head.bias,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
        )
    else:
        outputs = causal_lm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=batch["position_ids"], use_cache=False
        )
        logits = outputs.logits
        response_logits = logits.reshape(batch_size * length, logits.shape[-1])[response_index]
        logps, counts = sequence_logps(
            response_logits, response_labels, ignore_index=ignore_index, chunk_size=chunk_size
        )
    return PairLogps(logps[:batch_size], logps[batch_size:], counts[:batch_size], counts[batch_size:])


def prefix_batch_to_pair_batch(batch: dict[str, Any], pad_token_id: int = 0) -> dict[str, Any]:
    """The ordinary pair batch (``2b`` rows: prompt + chosen, then prompt + rejected) of a prefix-sharing batch.

    For models that cannot take the prefix-sharing forward. Reads the segment lengths on the host (a sync on an
    accelerator): a fallback, not a fast path. Other keys (``weights``, ``index``, ...) are kept.
    """
    from cwpo.data.collate import pad_sequences
    from cwpo.data.prefix_collate import PROMPT

    input_ids, segment_ids = batch["input_ids"].cpu(), batch["segment_ids"].cpu()
    prompts, chosen, rejected = [], [], []
    for ids, segments in zip(input_ids, segment_ids, strict=True):
        prompts.append(ids[segments == PROMPT].tolist())
        chosen.append(ids[segments == CHOSEN].tolist())
        rejected.append(ids[segments == REJECTED].tolist())
    rows = pad_sequences(prompts + prompts, chosen + rejected, pad_token_id=pad_token_id, side="right")
    device = batch["input_ids"].device
    pair_batch = {key: value for key, value in batch.items() if key not in _PREFIX_KEYS}
    pair_batch.update({key: value.to(device) for key, value in rows.items()})
    return pair_batch


_PREFIX_KEYS = frozenset(
    {"input_ids", "attention_mask", "position_ids", "segment_ids", "response_index", "response_labels"}
)


def num_pairs(batch: dict[str, Any]) -> int:
    """Pairs in a pair batch (``2b`` rows) or a prefix-sharing batch (``b`` rows)."""
    rows = batch["input_ids"].shape[0]
    return rows if "segment_ids" in batch else rows // 2


def pair_logps_of_batch(
    model: torch.nn.Module,
    batch: dict[str, Any],
    *,
    prefix_sharing: bool,
    logps_impl: str,
    two_row_logps: Callable[[torch.nn.Module, dict[str, Any]], Any],
) -> PairLogps:
    """Chosen/rejected log-probs of a pair batch or a prefix-sharing batch (the policy module's swap point).

    A prefix-sharing batch goes through :func:`prefix_pair_logps`, unless the model cannot take it (see
    :func:`prefix_sharing_unsupported_reason`): then a warning names the reason once and the batch is rebuilt as a
    pair batch for ``two_row_logps``. A pair batch goes to ``two_row_logps``.

    Raises:
        ConfigError: ``prefix_sharing`` is set but the batch is an ordinary pair batch, or the reverse.
    """
    is_prefix_batch = "segment_ids" in batch
    if is_prefix_batch != prefix_sharing:
        raise ConfigError(
            f"prefix_sharing={prefix_sharing} but the batch is a {'prefix-sharing' if is_prefix_batch else 'pair'} "
            "batch: set prefix_sharing the same on the module and on the datamodule (PairDataModule)"
        )
    if not is_prefix_batch:
        return PairLogps(*two_row_logps(model, batch))
    reason = prefix_sharing_unsupported_reason(model, logps_impl)
    if reason is None:
        return prefix_pair_logps(model, batch, logps_impl=logps_impl)
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"prefix sharing is off for this model ({reason}); using two rows per pair", stacklevel=2)
    return PairLogps(*two_row_logps(model, prefix_batch_to_pair_batch(batch)))


_warned: set[str] = set()
