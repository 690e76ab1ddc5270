"""Collators: tokenised rows -> padded tensors, in the batch layouts of ``docs/ARCHITECTURE.md``.

* :class:`PairCollator` (BT annotator, DPO/IPO/rDPO): rows ``0..b-1`` are prompt+chosen, rows ``b..2b-1``
  prompt+rejected of the same pairs, right padded; ``labels`` = ``input_ids`` on response tokens and
  ``-100`` on prompt and padding (not shifted); ``weights`` from ``confidence`` (else ones); ``index``.
* :class:`SFTCollator`: prompt+chosen, right padded, labels on the response only.
* :class:`PromptCollator` (generation): prompts, **left** padded, so every row's next token is at the end.

The attention mask is built from lengths, never by comparing ids with the pad id: many tokenizers use EOS as
pad, and EOS ends every response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100

# Optional per-pair columns copied into a pair batch, with their dtype.
_OPTIONAL_PAIR_KEYS = {
    "ref_chosen_logps": torch.float32,
    "ref_rejected_logps": torch.float32,
    "human_label": torch.long,
}


def _padded_length(lengths: Sequence[int], multiple: int | None) -> int:
    longest = max(lengths, default=0)
    if multiple:
        longest = -(-longest // multiple) * multiple
    return longest


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]] | None,
    *,
    pad_token_id: int,
    side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad ``prompt + response`` rows into ``input_ids``/``attention_mask`` (and ``labels`` with responses).

    Args:
        prompts: prompt ids per row.
        responses: response ids per row, or ``None`` for prompts only (no ``labels``).
        pad_token_id: id written into padding (masked out by ``attention_mask``).
        side: ``"right"`` (training, scoring) or ``"left"`` (generation).
        pad_to_multiple_of: round the padded length up to a multiple of this.

    Returns:
        ``input_ids``, ``attention_mask`` (and ``labels``), each of shape ``(rows, T)``, dtype long.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    rows = [list(p) + (list(responses[i]) if responses is not None else []) for i, p in enumerate(prompts)]
    width = _padded_length([len(r) for r in rows], pad_to_multiple_of)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long) if responses is not None else None
    for i, row in enumerate(rows):
        start = 0 if side == "right" else width - len(row)
        input_ids[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start : start + len(row)] = 1
        if labels is not None:
            n_prompt = len(prompts[i])
            labels[i, start + n_prompt : start + len(row)] = input_ids[i, start + n_prompt : start + len(row)]
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        out["labels"] = labels
    return out


def _index(features: Sequence[dict[str, Any]]) -> torch.Tensor:
    return torch.tensor([int(f.get("index", i)) for i, f in enumerate(features)], dtype=torch.long)


@dataclass
class PairCollator:
    """Pairs -> one batch of ``2b`` rows (chosen first, then rejected).

    Args:
        pad_token_id: the tokenizer's pad id.
        pad_to_multiple_of: round ``T`` up to a multiple of this (tensor cores like multiples of 8).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [f["prompt_ids"] for f in features]
        batch = pad_sequences(
            prompts + prompts,
            [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features],
            pad_token_id=self.pad_token_id,
            side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        if features and "confidence" in features[0]:
            batch["weights"] = torch.tensor([float(f["confidence"]) for f in features], dtype=torch.float32)
        else:
            batch["weights"] = torch.ones(len(features), dtype=torch.float32)
        batch["index"] = _index(features)
        for key, dtype in _OPTIONAL_PAIR_KEYS.items():
            if features and key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features], dtype=dtype)
        return batch


@dataclass
class SFTCollator:
    """Prompt + chosen rows, right padded, loss on the response only (``(b, T)``)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_sequences(
            [f["prompt_ids"] for f in features],
            [f["chosen_ids"] for f in features],
            pad_token_id=self.pad_token_id,
            side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        batch["index"] = _index(features)
        return batch


@dataclass
class PromptCollator:
    """Prompts for generation, left padded (``(b, T)``), with ``index``."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_sequences(
            [f["prompt_ids"] for f in features],
            None,
            pad_token_id=self.pad_token_id,
            side="left",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        batch["index"] = _index(features)
        return batch
