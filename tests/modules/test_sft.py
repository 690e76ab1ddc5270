"""SFTModule: response-only causal-LM loss, LoRA or full fine-tuning, and the hand-off to the policy."""

from __future__ import annotations

import lightning as L
import torch
from torch.testing import assert_close

from cwpo.models import LoraSpec
from cwpo.modules.optim import OptimConfig
from cwpo.modules.sft import SFTModule
from tests.tiny import tiny_spec


def sft_batch(rows: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """prompt + chosen rows, right padded, labels on the response only."""
    g = torch.Generator().manual_seed(seed)
    seqs = [(torch.randint(10, 133, (2 + i,), generator=g).tolist(), torch.randint(10, 133, (3 + i % 2,), generator=g).tolist())
            for i in range(rows)]  # fmt: skip
    width = max(len(p) + len(r) for p, r in seqs)
    input_ids = torch.zeros(rows, width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for k, (p, r) in enumerate(seqs):
        input_ids[k, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[k, : len(p) + len(r)] = 1
        labels[k, len(p) : len(p) + len(r)] = torch.tensor(r)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_model_is_built_lazily_and_only_once():
    module = SFTModule(tiny_spec())
    assert module.model is None
    module.configure_model()
    model = module.model
    module.configure_model()
    assert module.model is model


def test_loss_is_the_mean_nll_over_response_tokens_only():
    module = SFTModule(tiny_spec(), lora=LoraSpec(dropout=0.0))
    module.configure_model()
    batch = sft_batch()
    loss, n_tokens = module.compute_loss(batch)
    # transformers' own labels loss: mean cross-entropy over the (shifted) non-ignored positions.
    expected = module.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    assert_close(loss, expected)
    assert int(n_tokens) == int((batch["labels"] != -100).sum())
    # Prompt tokens carry no loss: changing them changes the context, not which tokens are scored.
    hidden_loss = SFTModule(tiny_spec(), lora=LoraSpec(dropout=0.0), logps_impl="hidden")
    hidden_loss.configure_model()
    assert_close(hidden_loss.compute_loss(batch)[0], loss, rtol=1e-5, atol=1e-6)


def test_lora_sft_loss_falls_and_moves_only_adapter_weights():
    module = SFTModule(tiny_spec(), lora=LoraSpec(dropout=0.0), optim=OptimConfig(lr=5e-2))
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    optimizer = module.configure_optimizers()["optimizer"]
    batch = sft_batch()
    losses = []
    for _ in range(6):
        loss, _ = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.2
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    moved = {n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n for n in moved)


def test_full_fine_tuning_trains_every_weight():
    module = SFTModule(tiny_spec(), lora=None, optim=OptimConfig(lr=1e-3))
    module.configure_model()
    assert not hasattr(module.model, "peft_config")
    assert all(p.requires_grad for p in module.parameters())
    optimizer = module.configure_optimizers()["optimizer"]
    before = module.compute_loss(sft_batch())[0]
    before.backward()
    optimizer.step()
    assert float(module.compute_loss(sft_batch())[0].detach()) < float(before.detach())


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = SFTModule(tiny_spec(), lora=LoraSpec(dropout=0.0))
    checkpointed = SFTModule(tiny_spec(), lora=LoraSpec(dropout=0.0), gradient_checkpointing=True)
    for module in (plain, checkpointed):
        module.configure_model()
        module.train()
        module.compute_loss(sft_batch())[0].backward()
    assert checkpointed.model.get_base_model().is_gradient_checkpointing
    grads = {n: p.grad for n, p in checkpointed.named_parameters() if p.requires_grad}
    for name, param in plain.named_parameters():
        if param.requires_grad:
            assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_sft_export_is_the_policy_start_and_reference(tmp_path):
    """fit → export_dir adapter → PolicyModule(init_adapter=...): adapter-disabled policy == the SFT model."""
    from cwpo.data import SFTDataModule
    from cwpo.modules.policy import PolicyModule

    export = tmp_path / "sft-adapter"
    sft = SFTModule(tiny_spec(), optim=OptimConfig(lr=5e-2), export_dir=str(export))
    data = SFTDataModule(dataset="synthetic", tokenizer="synthetic", part="d_l", limit=16, max_length=64, batch_size=8)
    L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path)).fit(sft, data)  # fmt: skip
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= {p.name for p in export.iterdir()}

    policy = PolicyModule(tiny_spec(), init_adapter=str(export))
    policy.configure_model()
    sft.model.eval()
    batch = sft_batch()
    pair = {**{k: torch.cat([v, v]) for k, v in batch.items()}, "weights": torch.ones(4), "index": torch.arange(4)}
    with torch.no_grad():
        sft_logps, _ = sft(batch)
        ref_chosen, _ = policy._reference_from_base(pair)
        start_chosen = policy.pair_logps(policy.policy, pair).chosen_logps
    assert_close(ref_chosen, sft_logps, rtol=1e-5, atol=1e-5)
    assert_close(start_chosen, sft_logps, rtol=1e-5, atol=1e-5)  # new LoRA B = 0: the policy starts at the SFT model
