"""Summed log-probabilities of response tokens, computed in chunks so no float32 (B, T, V) tensor ever exists.

``log π(y|x)`` in METHOD.md is the sum of the log-probabilities of the response tokens only; prompt and padding
positions carry ``ignore_index`` in ``labels``. ``labels`` are not shifted (HF convention): ``logits[:, t]``
predicts ``labels[:, t + 1]``, so ``labels[:, 0]`` is never scored.

Both entry points run a custom autograd function that, per chunk, upcasts the logits to float32, takes
``logsumexp`` and gathers the target logit in the forward pass, saves only the ``(B, T)`` or ``(N,)`` logsumexp,
and recomputes the chunk's softmax in the backward pass to write the gradient
``∂ log p(y_t) / ∂ z = onehot(y_t) - softmax(z)`` chunk by chunk. Plain autograd over chunks would save every
float32 chunk for the backward pass, i.e. the full float32 copy the chunking is meant to avoid. Autocast is
switched off inside: the dtypes used are the ones stated in each docstring, in the forward and the backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cwpo.errors import ConfigError
from cwpo.losses._common import compute_dtype


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an int >= 1, got {chunk_size!r}")


def _logsoftmax_grad_(scratch_logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor):
    """``grad · (onehot(targets) - softmax(logits))`` along the last dim, written over ``scratch_logits``.

    ``scratch_logits`` must be a fresh float32/float64 copy of the logits (it is overwritten: one chunk-sized
    buffer instead of two). Shapes: scratch_logits (..., V), lse (...), targets (...), grad (...).
    """
    grad_logits = scratch_logits.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
    return grad_logits.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1))


class _ChunkedTokenLogps(torch.autograd.Function):
    """Per-position ``log softmax(logits)[target]``, zero where ``mask`` is False, chunked over the sequence."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, chunk_size: int):
        dtype = compute_dtype(logits)
        seq_len = logits.shape[1]
        token_logps = logits.new_zeros(targets.shape, dtype=dtype)
        lse = logits.new_zeros(targets.shape, dtype=dtype)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for start in range(0, seq_len, chunk_size):
                chunk = slice(start, start + chunk_size)
                chunk_logits = logits[:, chunk].to(dtype)  # (B, c, V): the only float32 copy alive at a time
                lse[:, chunk] = torch.logsumexp(chunk_logits, dim=-1)
                target_logits = chunk_logits.gather(-1, targets[:, chunk].unsqueeze(-1)).squeeze(-1)
                token_logps[:, chunk] = target_logits - lse[:, chunk]
        token_logps = torch.where(mask, token_logps, 0.0)
        ctx.save_for_backward(logits, targets, mask, lse)
        ctx.chunk_size = chunk_size
        return token_logps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_token_logps: torch.Tensor):
        logits, targets, mask, lse = ctx.saved_tensors
        grad = torch.where(mask, grad_token_logps.to(lse.dtype), 0.0)
        grad_logits = torch.empty_like(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            for start in range(0, logits.shape[1], ctx.chunk_size):
                chunk = slice(start, start + ctx.chunk_size)
                scratch = logits[:, chunk].to(lse.dtype, copy=True)  # a copy even when logits are float32
                grad_logits[:, chunk] = _logsoftmax_grad_(scratch, lse[:, chunk], targets[:, chunk], grad[:, chunk])
        return grad_logits, None, None, None


def _shifted_targets(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets aligned with positions: position t predicts ``labels[:, t + 1]``; the last position predicts nothing.

    Returns ``(targets, mask)``, both (B, T); ``targets`` is 0 wherever ``mask`` is False, so it can be gathered.
    """
    next_labels = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)
    mask = next_labels != ignore_index
    return next_labels.masked_fill(~mask, 0), mask


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, chunk_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each sequence's response tokens, and how many there are.

    ``logps[i] = Σ_t log softmax(logits[i, t])[labels[i, t + 1]]`` over the positions whose next label is not
    ``ignore_index``. The sequence is processed ``chunk_size`` positions at a time: each chunk is upcast to float32
    (peak extra memory about ``B · chunk_size · V · 4`` bytes, in the forward and again in the backward pass), and
    only the logsumexp is kept for the backward pass. The gradient w.r.t. ``logits`` has ``logits``' dtype. No
    host sync. A row without response tokens gets ``logps = 0`` and ``token_counts = 0``.

    Args:
        logits: the LM's logits. Shape (B, T, V), any float dtype.
        labels: token ids on response tokens, ``ignore_index`` elsewhere; NOT shifted. Shape (B, T).
        ignore_index: the label of prompt and padding positions.
        chunk_size: sequence positions per chunk.

    Returns:
        ``(logps, token_counts)``: logps float32 (float64 for float64 logits), token_counts int64. Shapes (B,), (B,).

    Raises:
        ConfigError: if ``chunk_size < 1`` or the shapes of ``logits`` and ``labels`` disagree.
    """
    _check_chunk_size(chunk_size)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ConfigError(f"logits (B, T, V) and labels (B, T) disagree: {tuple(logits.shape)}, {tuple(labels.shape)}")
    targets, mask = _shifted_targets(labels, ignore_index)
    token_logps = _ChunkedTokenLogps.apply(logits, targets, mask, chunk_size)
    return token_logps.sum(dim=-1), mask.sum(dim=-1)


class _ChunkedHeadLogps(torch.autograd.Function):
    """``log softmax(rows @ weight.T + bias)[target]`` per row, chunked over rows; never builds (N, V) at once."""

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
    ):
        dtype = compute_dtype(weight)
        token_logps = rows.new_empty(targets.shape, dtype=dtype)
        lse = rows.new_empty(targets.shape, dtype=dtype)
        with torch.autocast(device_type=rows.device.type, enabled=False):
            for start in range(0, rows.shape[0], chunk_size):
                chunk = slice(start, start + chunk_size)
                chunk_logits = F.linear(rows[chunk].to(weight.dtype), weight, bias).to(dtype)  # (c, V)
                lse[chunk] = torch.logsumexp(chunk_logits, dim=-1)
                target_logits = chunk_logits.gather(-1, targets[chunk].unsqueeze(-1)).squeeze(-1)
                token_logps[chunk] = target_logits - lse[chunk]
        ctx.save_for_backward(rows, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        return token_logps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_token_logps: torch.Tensor):
        rows, weight, bias, targets, lse = ctx.saved_tensors
        needs_rows, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad = grad_token_logps.to(lse.dtype)
        grad_rows = torch.empty_like(rows) if needs_rows else None
        # Weight and bias gradients sum over all chunks: accumulate them in float32 even for a bf16 head.
        grad_weight = torch.zeros_like(weight, dtype=lse.dtype) if needs_weight else None
        grad_bias = torch.zeros_like(bias, dtype=lse.dtype) if needs_bias else None
        with torch.autocast(device_type=rows.device.type, enabled=False):
            for start in range(0, rows.shape[0], ctx.chunk_size):
                chunk = slice(start, start + ctx.chunk_size)
                chunk_rows = rows[chunk].to(weight.dtype)
                # F.linear's output is a fresh tensor (and so is its upcast): safe to overwrite.
                chunk_logits = F.linear(chunk_rows, weight, bias).to(lse.dtype)
                grad_logits = _logsoftmax_grad_(chunk_logits, lse[chunk], targets[chunk], grad[chunk])
                if needs_bias:
                    grad_bias += grad_logits.sum(dim=0)
                grad_logits = grad_logits.to(weight.dtype)
                if needs_rows:
                    grad_rows[chunk] = grad_logits @ weight
                if needs_weight:
                    grad_weight += grad_logits.T @ chunk_rows
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_rows, grad_weight, grad_bias, None, None


def response_logps_from_hidden(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logps(hidden_states @ lm_head_weight.T + lm_head_bias, labels)`` without the (B, T, V) logits.

    Only the positions whose next label is a response token are sent through the LM head, ``chunk_size`` rows at
    a time; the logits of a chunk are upcast to float32 for the logsumexp and the gather, and the per-token
    log-probabilities are summed per sequence with ``index_add_``. The head is applied in ``lm_head_weight``'s
    dtype (as the model's own head would be without autocast; the hidden rows are cast to it), so the result
    equals ``sequence_logps(F.linear(hidden_states.to(W.dtype), W, b), labels)``. Differentiable w.r.t. the
    hidden states, the weight and the bias (gradients in their dtypes; the weight and bias gradients are
    accumulated in float32), e.g. for LoRA training.

    Args:
        hidden_states: the last hidden states of the LM (after its final norm). Shape (B, T, H).
        lm_head_weight: the LM head's weight. Shape (V, H).
        labels: token ids on response tokens, ``ignore_index`` elsewhere; NOT shifted. Shape (B, T).
        lm_head_bias: the LM head's bias, if it has one. Shape (V,).
        ignore_index: the label of prompt and padding positions.
        chunk_size: response rows per chunk; peak extra memory about ``chunk_size · V · 4`` bytes (float32 logits).

    Returns:
        ``(logps, token_counts)``: logps float32 (float64 for a float64 head), token_counts int64. Shapes (B,), (B,).

    Raises:
        ConfigError: if ``chunk_size < 1`` or the shapes disagree.
    """
    _check_chunk_size(chunk_size)
    if hidden_states.dim() != 3 or labels.shape != hidden_states.shape[:2] or lm_head_weight.dim() != 2:
        raise ConfigError(
            f"hidden_states (B, T, H), labels (B, T) and lm_head_weight (V, H) disagree: "
            f"{tuple(hidden_states.shape)}, {tuple(labels.shape)}, {tuple(lm_head_weight.shape)}"
        )
    if lm_head_weight.shape[1] != hidden_states.shape[2]:
        raise ConfigError(
            f"lm_head_weight {tuple(lm_head_weight.shape)} does not match hidden size {hidden_states.shape[2]}"
        )
    targets, mask = _shifted_targets(labels, ignore_index)
    # Boolean selection needs the number of response tokens on the host: a sync on CUDA, free on CPU. It buys
    # running the head on response rows only (prompt and padding positions are often most of the batch).
    sequence_index, position_index = mask.nonzero(as_tuple=True)
    rows = hidden_states[sequence_index, position_index]  # (N, H)
    token_logps = _ChunkedHeadLogps.apply(
        rows, lm_head_weight, lm_head_bias, targets[sequence_index, position_index], chunk_size
    )
    logps = token_logps.new_zeros(labels.shape[0])
    logps.index_add_(0, sequence_index, token_logps)
    return logps, mask.sum(dim=-1)
