"""Prefix-sharing pair batches: each pair as ONE row ``prompt + chosen + rejected``, so the prompt is encoded once.

The ordinary pair batch (``docs/ARCHITECTURE.md``) holds ``prompt + chosen`` and ``prompt + rejected`` as two rows,
so every prompt token goes through the model twice. Here a pair is one row; the model sees it through a custom
attention mask and restarted position ids (built by :func:`cwpo.modules.prefix.prefix_attention_mask` from the
``segment_ids`` below), which make the rejected tokens see the prompt and earlier rejected tokens only, at the
positions they would have without the chosen response in between. The hidden states are then exactly those of the
two separate sequences, and the summed response log-probs too (``tests/modules/test_prefix.py``).

Batch keys (``b`` pairs, ``L`` = longest ``prompt + chosen + rejected`` in the batch, ``S`` = longest response):

| key | shape | meaning |
| --- | --- | --- |
| ``input_ids`` | (b, L) long | prompt, chosen, rejected tokens, right padded with ``pad_token_id`` |
| ``attention_mask`` | (b, L) long | 1 on real tokens (the 2D padding mask; the model gets the 4D one) |
| ``position_ids`` | (b, L) long | ``0..P-1`` prompt, ``P..P+C-1`` chosen, ``P..P+R-1`` rejected (restarted), 0 on padding |
| ``segment_ids`` | (b, L) long | :data:`PROMPT`, :data:`CHOSEN`, :data:`REJECTED`, or :data:`PADDING` |
| ``response_index`` | (2b, S+1) long | flat index into the ``b·L`` positions of the hidden state that predicts response token ``t`` (at column ``t``); rows ``0..b-1`` chosen, ``b..2b-1`` rejected, as in the pair batch |
| ``response_labels`` | (2b, S+1) long | response token ``t`` at column ``t + 1``, ``ignore_index`` elsewhere: NOT shifted, so ``(hidden[response_index], response_labels)`` is an ordinary ``(hidden_states, labels)`` pair for :func:`cwpo.losses.response_logps_from_hidden` |
| ``weights``, ``index``, ``ref_chosen_logps``, ``ref_rejected_logps``, ``human_label`` | (b,) | as in the pair batch |

The trap the index table handles: the first rejected token is predicted by the last *prompt* position (it follows
the prompt in the rejected sequence), not by the last chosen token that precedes it in the row.

Truncation is per sequence and keeps the start, as the pair collators do for a ``max_length`` (and as TRL 1.16's
``DataCollatorForPreference`` does with ``truncation_mode="keep_start"``): ``prompt + chosen`` and
``prompt + rejected`` are each cut to ``max_length`` tokens, so both responses lose their ends and the prompt is
kept whole unless it alone is over the budget. ``keep_end`` cannot share a prefix (the two sequences would keep
different parts of the prompt) and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cwpo.errors import ConfigError

PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1
"""Values of ``segment_ids``."""


def truncated_lengths(prompt_len: int, chosen_len: int, rejected_len: int, max_length: int | None) -> tuple[int, ...]:
    """Token counts ``(prompt, chosen, rejected)`` kept when each ``prompt + response`` is cut to ``max_length``.

    Keep-start truncation per sequence: the prompt keeps ``min(P, max_length)`` tokens, each response
    ``min(len, max_length - P)`` (at least 0).
    """
    if max_length is None:
        return prompt_len, chosen_len, rejected_len
    room = max(max_length - prompt_len, 0)
    return min(prompt_len, max_length), min(chosen_len, room), min(rejected_len, room)


def _pad_to(length: int, multiple: int | None) -> int:
    if not multiple:
        return length
    return -(-length // multiple) * multiple


def pair_extras(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The per-pair tensors every pair batch carries besides the tokens (same keys and rules as the pair batch).

    ``weights`` is the ``confidence`` column when present, else 1; ``index`` the example's ``index`` (its
    position in the batch when absent); ``ref_chosen_logps``, ``ref_rejected_logps`` and ``human_label`` are
    passed through when the examples have them.
    """
    first = examples[0]
    extras: dict[str, torch.Tensor] = {}
    if "confidence" in first and first["confidence"] is not None:
        extras["weights"] = torch.tensor([float(e["confidence"]) for e in examples], dtype=torch.float32)
    else:
        extras["weights"] = torch.ones(len(examples), dtype=torch.float32)
    extras["index"] = torch.tensor([int(e.get("index", i)) for i, e in enumerate(examples)], dtype=torch.long)
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        if key in first and first[key] is not None:
            extras[key] = torch.tensor([float(e[key]) for e in examples], dtype=torch.float32)
    if "human_label" in first and first["human_label"] is not None:
        extras["human_label"] = torch.tensor([int(e["human_label"]) for e in examples], dtype=torch.long)
    return extras


@dataclass
class PrefixPairCollator:
    """Collate tokenised pairs (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) into prefix-sharing batches.

    Args:
        pad_token_id: the id written on padding positions (never attended to, never scored).
        max_length: budget of each ``prompt + response`` sequence (keep-start truncation, see the module
            docstring), or None for none. The prefix-shared row itself is up to ``2·max_length - P`` long.
        truncation_mode: only ``"keep_start"``; ``"keep_end"`` cannot share the prompt and raises.
        pad_to_multiple_of: round ``L`` up to a multiple of this (None: pad to the longest row only).
        ignore_index: the label of positions that are not scored.
    """

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if self.truncation_mode != "keep_start":
            raise ConfigError(
                f"prefix sharing needs truncation_mode='keep_start', got {self.truncation_mode!r}: with 'keep_end' "
                "the chosen and rejected sequences keep different parts of the prompt, so it cannot be shared"
            )
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1 or None, got {self.max_length}")

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ConfigError("cannot collate an empty batch")
        batch_size = len(examples)
        kept = []
        for example in examples:
            prompt, chosen, rejected = (list(example[key]) for key in ("prompt_ids", "chosen_ids", "rejected_ids"))
            n_prompt, n_chosen, n_rejected = truncated_lengths(len(prompt), len(chosen), len(rejected), self.max_length)
            kept.append((prompt[:n_prompt], chosen[:n_chosen], rejected[:n_rejected]))
        row_length = _pad_to(max(sum(map(len, parts)) for parts in kept), self.pad_to_multiple_of)
        longest_response = max(max(len(chosen), len(rejected)) for _, chosen, rejected in kept)

        input_ids = torch.full((batch_size, row_length), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((batch_size, row_length), dtype=torch.long)
        segment_ids = torch.full((batch_size, row_length), PADDING, dtype=torch.long)
        # Column 0 of the labels is never a target (nothing predicts it); padding columns point at position 0.
        response_index = torch.zeros((2 * batch_size, longest_response + 1), dtype=torch.long)
        response_labels = torch.full((2 * batch_size, longest_response + 1), self.ignore_index, dtype=torch.long)

        for row, (prompt, chosen, rejected) in enumerate(kept):
            n_prompt, n_chosen, n_rejected = len(prompt), len(chosen), len(rejected)
            start_chosen, start_rejected = n_prompt, n_prompt + n_chosen
            end = start_rejected + n_rejected
            input_ids[row, :end] = torch.tensor(prompt + chosen + rejected, dtype=torch.long)
            segment_ids[row, :start_chosen] = PROMPT
            segment_ids[row, start_chosen:start_rejected] = CHOSEN
            segment_ids[row, start_rejected:end] = REJECTED
            position_ids[row, :start_rejected] = torch.arange(start_rejected)
            # Rejected positions restart after the prompt, as if chosen were absent.
            position_ids[row, start_rejected:end] = torch.arange(n_prompt, n_prompt + n_rejected)
            base = row * row_length
            for response_row, start, tokens in (
                (row, start_chosen, chosen),
                (batch_size + row, start_rejected, rejected),
            ):
                if not tokens:
                    continue
                # Token t of a response is predicted by the position before it; for t = 0 that is the last prompt
                # position (n_prompt - 1) for BOTH responses, not the last chosen token for the rejected one.
                predictors = torch.arange(start - 1, start - 1 + len(tokens))
                predictors[0] = n_prompt - 1
                labels = torch.tensor(tokens, dtype=torch.long)
                if n_prompt == 0:  # nothing predicts a first token without a prompt (as labels[:, 0] in a pair batch)
                    labels[0] = self.ignore_index
                    predictors[0] = 0
                response_index[response_row, : len(tokens)] = base + predictors
                response_labels[response_row, 1 : len(tokens) + 1] = labels

        return {
            "input_ids": input_ids,
            "attention_mask": (segment_ids != PADDING).long(),
            "position_ids": position_ids,
            "segment_ids": segment_ids,
            "response_index": response_index,
            "response_labels": response_labels,
            **pair_extras(examples),
        }
