"""Collators: exact tensors for a hand-made batch (row order, padding side, -100 positions)."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from cwpo.data import PairCollator, PromptCollator, SFTCollator
from cwpo.data.collate import pad_sequences

PAD = 0
FEATURES = [
    {"prompt_ids": [5, 6], "chosen_ids": [7, 2], "rejected_ids": [8, 9, 2], "index": 3, "confidence": 0.25,
     "human_label": 1, "ref_chosen_logps": -1.5, "ref_rejected_logps": -2.5},
    {"prompt_ids": [5], "chosen_ids": [2], "rejected_ids": [9, 2], "index": 0, "confidence": 1.0,
     "human_label": 0, "ref_chosen_logps": -0.5, "ref_rejected_logps": -3.0},
]  # fmt: skip


def test_pair_batch_exact():
    """Rows 0..b-1: prompt+chosen; rows b..2b-1: prompt+rejected of the same pairs; right padded to T = 5.

    Pair 0: prompt [5, 6], chosen [7, 2] -> [5, 6, 7, 2, pad]; rejected [8, 9, 2] -> [5, 6, 8, 9, 2].
    Pair 1: prompt [5], chosen [2] -> [5, 2, pad, pad, pad]; rejected [9, 2] -> [5, 9, 2, pad, pad].
    Labels copy the response tokens and hold -100 on prompt and padding (not shifted).
    """
    batch = PairCollator(pad_token_id=PAD)(FEATURES)
    assert_close(batch["input_ids"], torch.tensor([
        [5, 6, 7, 2, 0],
        [5, 2, 0, 0, 0],
        [5, 6, 8, 9, 2],
        [5, 9, 2, 0, 0],
    ]))  # fmt: skip
    assert_close(batch["attention_mask"], torch.tensor([
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
    ]))  # fmt: skip
    assert_close(batch["labels"], torch.tensor([
        [-100, -100, 7, 2, -100],
        [-100, 2, -100, -100, -100],
        [-100, -100, 8, 9, 2],
        [-100, 9, 2, -100, -100],
    ]))  # fmt: skip
    assert_close(batch["weights"], torch.tensor([0.25, 1.0]))
    assert_close(batch["index"], torch.tensor([3, 0]))
    assert_close(batch["human_label"], torch.tensor([1, 0]))
    assert_close(batch["ref_chosen_logps"], torch.tensor([-1.5, -0.5]))
    assert_close(batch["ref_rejected_logps"], torch.tensor([-2.5, -3.0]))
    for key in ("input_ids", "attention_mask", "labels", "index", "human_label"):
        assert batch[key].dtype == torch.long
    assert batch["weights"].dtype == torch.float32


def test_pair_batch_without_optional_columns_has_unit_weights():
    plain = [{k: f[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for f in FEATURES]
    batch = PairCollator(pad_token_id=PAD)(plain)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "weights", "index"}
    assert_close(batch["weights"], torch.ones(2))
    assert_close(batch["index"], torch.tensor([0, 1]))  # position in the batch when rows carry no index


def test_pad_equal_to_eos_keeps_the_eos_in_the_mask():
    """SmolLM2-style pad == EOS (2): the attention mask comes from lengths, so the final EOS still counts."""
    batch = PairCollator(pad_token_id=2)(FEATURES)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0]
    assert batch["labels"][0].tolist() == [-100, -100, 7, 2, -100]
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 2, 2]


def test_pad_to_multiple_of():
    batch = PairCollator(pad_token_id=PAD, pad_to_multiple_of=8)(FEATURES)
    assert batch["input_ids"].shape == (4, 8)


def test_sft_batch_exact():
    batch = SFTCollator(pad_token_id=PAD)(FEATURES)
    assert_close(batch["input_ids"], torch.tensor([[5, 6, 7, 2], [5, 2, 0, 0]]))
    assert_close(batch["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert_close(batch["labels"], torch.tensor([[-100, -100, 7, 2], [-100, 2, -100, -100]]))
    assert_close(batch["index"], torch.tensor([3, 0]))


def test_prompt_batch_is_left_padded():
    batch = PromptCollator(pad_token_id=PAD)(FEATURES)
    assert_close(batch["input_ids"], torch.tensor([[5, 6], [0, 5]]))
    assert_close(batch["attention_mask"], torch.tensor([[1, 1], [0, 1]]))
    assert_close(batch["index"], torch.tensor([3, 0]))
    assert "labels" not in batch


def test_pad_sequences_left_with_responses():
    out = pad_sequences([[1], [1, 2]], [[3], [4]], pad_token_id=0, side="left")
    assert out["input_ids"].tolist() == [[0, 1, 3], [1, 2, 4]]
    assert out["labels"].tolist() == [[-100, -100, 3], [-100, -100, 4]]
