"""PolicyModule: CW-DPO/IPO/rDPO on tiny random models and hand-built pair batches (ARCHITECTURE.md layout)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from cwpo.errors import ConfigError
from cwpo.losses import ipo_loss, rdpo_loss
from cwpo.models import LoraSpec
from cwpo.modules.optim import OptimConfig
from cwpo.modules.policy import PolicyModule
from tests.tiny import tiny_spec

NO_DROPOUT = LoraSpec(dropout=0.0)


def pair_batch(pairs: int = 4, seed: int = 0, weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """A right-padded pair batch: rows 0..b-1 prompt+chosen, b..2b-1 prompt+rejected; labels on responses only."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(pairs):
        prompt = torch.randint(10, 133, (3 + i % 3,), generator=g).tolist()
        chosen = torch.randint(10, 133, (2 + i % 4,), generator=g).tolist()
        rejected = torch.randint(10, 133, (3 + (i + 1) % 3,), generator=g).tolist()
        rows.append((prompt, chosen, rejected))
    seqs = [(p, c) for p, c, _ in rows] + [(p, r) for p, _, r in rows]
    width = max(len(p) + len(x) for p, x in seqs)
    input_ids = torch.zeros(2 * pairs, width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for k, (p, x) in enumerate(seqs):
        n = len(p) + len(x)
        input_ids[k, :n] = torch.tensor(p + x)
        attention_mask[k, :n] = 1
        labels[k, len(p) : n] = torch.tensor(x)
    w = torch.tensor(weights) if weights is not None else torch.rand(pairs, generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "weights": w,
            "index": torch.arange(pairs)}  # fmt: skip


def select_pairs(batch: dict[str, torch.Tensor], which: list[int]) -> dict[str, torch.Tensor]:
    """The sub-batch of pairs ``which`` (both their rows), trimmed of all-padding columns."""
    pairs = batch["weights"].shape[0]
    rows = torch.tensor(which + [pairs + i for i in which])
    width = int(batch["attention_mask"][rows].sum(1).max())
    out = {k: batch[k][rows, :width] for k in ("input_ids", "attention_mask", "labels")}
    out["weights"] = batch["weights"][which]
    out["index"] = batch["index"][which]
    return out


def perturb_lora(module: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    """Make the policy differ from its reference: random LoRA B matrices (PEFT starts them at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)


def lora_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}


def make(**kwargs) -> PolicyModule:
    kwargs.setdefault("lora", NO_DROPOUT)
    module = PolicyModule(tiny_spec(), **kwargs)
    module.configure_model()
    return module


def test_model_is_built_in_configure_model_only_and_idempotently():
    module = PolicyModule(tiny_spec())
    assert module.policy is None and module.reference_model is None
    module.configure_model()
    policy = module.policy
    module.configure_model()
    assert module.policy is policy
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_invalid_configurations_fail_at_construction():
    with pytest.raises(ConfigError, match="registered objectives"):
        PolicyModule(tiny_spec(), objective="kto")
    with pytest.raises(ConfigError, match="epsilon"):
        PolicyModule(tiny_spec(), objective="rdpo", epsilon=0.6)
    with pytest.raises(ConfigError, match="adapter_disabled"):
        PolicyModule(tiny_spec(), lora=None)
    with pytest.raises(ConfigError, match="weighting"):
        PolicyModule(tiny_spec(), weighting="soft")


def test_starting_policy_equals_reference_so_dpo_loss_is_weighted_log2():
    module = make()
    batch = pair_batch(weights=[1.0, 0.5, 0.0, 0.25])
    loss, metrics = module.compute_loss(batch)
    # h = 0 for every pair: ℓ = log 2, loss = mean(c) · log 2 with reduction "mean".
    assert_close(loss, torch.tensor(0.4375 * 0.6931471805599453))
    assert_close(metrics["weights/mean"], torch.tensor(0.4375))
    assert_close(metrics["rewards/margins"], torch.tensor(0.0))


def test_loss_falls_over_a_few_steps_on_a_fixed_batch():
    module = make(beta=0.5, optim=OptimConfig(lr=3e-2))
    optimizer = module.configure_optimizers()["optimizer"]
    batch = pair_batch(weights=[1.0, 0.8, 0.6, 0.9])
    losses = []
    for _ in range(8):
        loss, _ = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    _, metrics = module.compute_loss(batch)
    assert float(metrics["rewards/accuracies"]) == 1.0


@pytest.mark.parametrize(
    ("objective", "extra", "reference_loss"),
    [
        ("ipo", {"tau": 0.25, "ipo_length_normalize": True}, "ipo_normalized"),
        ("ipo", {"tau": 0.25, "ipo_length_normalize": False}, "ipo_summed"),
        ("rdpo", {"beta": 0.5, "epsilon": 0.2}, "rdpo"),
    ],
)
def test_objective_is_selected_by_config(objective, extra, reference_loss):
    module = make(objective=objective, **extra)
    perturb_lora(module)
    batch = pair_batch(weights=[1.0, 0.5, 0.3, 0.9])
    loss, _ = module.compute_loss(batch)
    with torch.no_grad():
        policy = module.pair_logps(module.policy, batch)
        ref_chosen, ref_rejected = module._reference_from_base(batch)
    chosen, rejected = policy.chosen_logps - ref_chosen, policy.rejected_logps - ref_rejected
    expected_per_pair = {
        "ipo_normalized": lambda: ipo_loss(
            chosen, rejected, tau=0.25, chosen_lengths=policy.chosen_counts, rejected_lengths=policy.rejected_counts
        ),
        "ipo_summed": lambda: ipo_loss(chosen, rejected, tau=0.25),
        "rdpo": lambda: rdpo_loss(chosen, rejected, beta=0.5, epsilon=0.2),
    }[reference_loss]()
    assert_close(loss.detach(), (batch["weights"] * expected_per_pair).mean())


def test_a_pair_with_weight_zero_contributes_no_gradient():
    module = make()
    perturb_lora(module)
    batch = pair_batch(pairs=3, weights=[1.0, 0.0, 0.7])
    module.compute_loss(batch)[0].backward()
    with_pair = lora_grads(module)
    module.zero_grad()
    # The same batch with pair 1's tokens replaced: its content must not matter at weight 0.
    changed = {k: v.clone() for k, v in batch.items()}
    for row in (1, 4):
        response = changed["labels"][row] != -100
        changed["input_ids"][row][response] = (changed["input_ids"][row][response] + 7) % 120 + 10
        changed["labels"][row][response] = changed["input_ids"][row][response]
    module.compute_loss(changed)[0].backward()
    for name, grad in lora_grads(module).items():
        assert_close(grad, with_pair[name], msg=name)
    assert any(g.abs().sum() > 0 for g in with_pair.values())


def test_gradient_accumulation_of_four_single_pairs_equals_one_batch_of_four():
    module = make(reduction="mean")
    perturb_lora(module)
    batch = pair_batch(pairs=4, weights=[1.0, 0.2, 0.6, 0.9])
    module.compute_loss(batch)[0].backward()
    full = lora_grads(module)
    module.zero_grad()
    for i in range(4):
        # Lightning divides each micro-batch loss by accumulate_grad_batches before backward.
        (module.compute_loss(select_pairs(batch, [i]))[0] / 4).backward()
    for name, grad in lora_grads(module).items():
        assert_close(grad, full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_logits_and_hidden_logprob_paths_agree_through_peft():
    logits_module = make(logps_impl="logits")
    hidden_module = make(logps_impl="hidden")
    perturb_lora(logits_module)
    perturb_lora(hidden_module)
    batch = pair_batch()
    loss_logits, _ = logits_module.compute_loss(batch)
    loss_hidden, _ = hidden_module.compute_loss(batch)
    assert_close(loss_hidden, loss_logits, rtol=1e-5, atol=1e-6)
    for impl_module in (logits_module, hidden_module):
        assert_close(impl_module.pair_logps(impl_module.policy, batch).chosen_logps,
                     logits_module.pair_logps(logits_module.policy, batch).chosen_logps, rtol=1e-5, atol=1e-5)  # fmt: skip
    loss_logits.backward()
    loss_hidden.backward()
    hidden_grads = lora_grads(hidden_module)
    for name, grad in lora_grads(logits_module).items():
        assert_close(hidden_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_uniform_weighting_ignores_confidence_and_normalized_reduction_divides_by_weight_sum():
    module = make(weighting="uniform")
    perturb_lora(module)
    batch = pair_batch(weights=[0.1, 0.2, 0.3, 0.4])
    uniform, metrics = module.compute_loss(batch)
    assert_close(metrics["weights/mean"], torch.tensor(1.0))
    plain = module.compute_loss({**batch, "weights": torch.ones(4)})[0]
    assert_close(uniform, plain)
    normalized = make(reduction="normalized")
    perturb_lora(normalized)
    # Σ c·ℓ / Σ c with c = 1 everywhere is the plain mean.
    assert_close(normalized.compute_loss({**batch, "weights": torch.ones(4)})[0], plain)


def test_top_n_weighting_reads_a_dataset_level_table_by_index():
    module = make(weighting="top_n", top_n_fraction=0.5)
    batch = pair_batch(weights=[0.9, 0.1, 0.8, 0.2])
    with pytest.raises(ConfigError, match="weights table"):
        module.compute_loss(batch)
    # As prepare_tables() builds it: top-N of the whole dataset's confidences (here 6 rows), read by index.
    from cwpo.losses import top_n_weights

    module.set_table("train", "weights", top_n_weights(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.95, 0.0]), 0.5))
    _, metrics = module.compute_loss({**batch, "index": torch.tensor([0, 1, 2, 3])})
    assert_close(metrics["weights/mean"], torch.tensor(0.5))  # rows 0 and 2 kept, 4 is not in this batch


def test_sft_then_policy_through_the_fit_cli_with_overrides(tmp_path, monkeypatch):
    """``python -m cwpo.fit --model sft|policy --config configs/...synthetic.yaml`` + command-line overrides."""
    from pathlib import Path

    from cwpo import fit

    configs = Path(__file__).resolve().parents[2] / "configs"
    monkeypatch.chdir(tmp_path)
    quick = ["--data.limit", "16", "--data.batch_size", "8", "--data.val_part", "null", "--trainer.limit_val_batches", "0",
             "--trainer.max_steps", "2", "--seed_everything", "0"]  # fmt: skip
    sft = fit.build_cli("sft", ["--config", str(configs / "sft" / "synthetic.yaml"), *quick,
                                "--model.export_dir", "sft-adapter"])  # fmt: skip
    assert sft.trainer.global_step == 2 and (tmp_path / "sft-adapter" / "adapter_model.safetensors").exists()
    policy = fit.build_cli("policy", ["--config", str(configs / "policy" / "synthetic.yaml"), *quick,
                                      "--model.init_adapter", "sft-adapter", "--model.objective", "ipo",
                                      "--model.reference", "precomputed", "--model.export_dir", "po-adapter"])  # fmt: skip
    assert policy.model.hparams.objective == "ipo" and policy.trainer.global_step == 2
    assert (tmp_path / "po-adapter" / "adapter_model.safetensors").exists()
    assert list((tmp_path / "runs" / "policy" / "reference_cache").glob("reference-logps-*.safetensors"))


def test_hparams_are_plain_data_so_checkpoints_load_with_weights_only(tmp_path):
    """Built from Python (dataclass arguments), the saved hyper-parameters still load with weights_only=True."""
    from cwpo.modules.sft import SFTModule

    for module in (make(), SFTModule(tiny_spec(), lora=LoraSpec(), optim=OptimConfig(lr=1e-3))):
        path = tmp_path / f"{type(module).__name__}.pt"
        torch.save({"hyper_parameters": dict(module.hparams)}, path)
        loaded = torch.load(path, weights_only=True)["hyper_parameters"]
        assert loaded["backbone"]["name_or_path"] == "synthetic" and isinstance(loaded["optim"], dict)
        assert type(module)(**{k: v for k, v in loaded.items() if k != "_instantiator"}).backbone == module.backbone
