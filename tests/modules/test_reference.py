"""The reference three ways (adapter disabled, separate model, precomputed on disk): same loss, no drift."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader, Dataset

from cwpo.data.tokenization import dataset_fingerprint
from cwpo.errors import DataError
from cwpo.models import LoraSpec
from cwpo.modules.optim import OptimConfig
from cwpo.modules.policy import PolicyModule
from cwpo.modules.reference import (
    REFERENCE_MODES,
    TOKEN_COLUMNS,
    collect_by_index,
    length_sorted_loader,
    row_lengths,
)
from tests.tiny import tiny_spec


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Tokenised pair rows (docs/ARCHITECTURE.md): prompt_ids, chosen_ids, rejected_ids, confidence."""
    g = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        return torch.randint(10, 133, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()

    return [{"prompt_ids": ids(2, 6), "chosen_ids": ids(1, 6) + [2], "rejected_ids": ids(1, 6) + [2],
             "confidence": float(torch.rand(1, generator=g))} for _ in range(n)]  # fmt: skip


class IndexedRows(Dataset):
    """A ``datasets.Dataset`` served as dicts that carry their row ``index`` (what cwpo.data's loaders do)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[int(index)], "index": int(index)}


class TinyPairData(L.LightningDataModule):
    def __init__(self, n: int = 10, batch_size: int = 4, seed: int = 0):
        super().__init__()
        import datasets

        from cwpo.data.collate import PairCollator

        self.dataset = datasets.Dataset.from_list(pair_rows(n, seed))
        self.batch_size = batch_size
        self.collate = PairCollator(pad_token_id=0)

    def train_dataloader(self):
        return DataLoader(IndexedRows(self.dataset), batch_size=self.batch_size, shuffle=True, collate_fn=self.collate)


def batch_of(rows: list[dict]) -> dict[str, torch.Tensor]:
    from cwpo.data.collate import PairCollator

    return PairCollator(pad_token_id=0)([{**row, "index": i} for i, row in enumerate(rows)])


def perturb_lora(module: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path))  # fmt: skip
    options.update(kwargs)
    return L.Trainer(**options)


def test_three_reference_modes_give_the_same_loss_and_gradients():
    batch = batch_of(pair_rows(5))
    modules = {}
    for mode in REFERENCE_MODES:
        modules[mode] = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0), reference=mode)
        modules[mode].configure_model()
        perturb_lora(modules[mode])
    # The precomputed table, as the fit-start pass builds it: the SFT model (adapter off), keyed by row index.
    base = modules["adapter_disabled"]
    table = collect_by_index([batch], lambda b: torch.stack(base._reference_from_base(b), dim=1), 5)
    modules["precomputed"].set_table("train", "reference", table)
    losses = {mode: module.compute_loss(batch)[0] for mode, module in modules.items()}
    for mode in REFERENCE_MODES:
        assert_close(losses[mode], losses["adapter_disabled"], rtol=1e-6, atol=1e-7, msg=mode)
    # The policy really differs from its reference (otherwise every mode gives mean(c)·log 2).
    assert abs(float(losses["adapter_disabled"].detach()) - float(batch["weights"].mean()) * 0.6931) > 1e-3
    grads = {}
    for mode, module in modules.items():
        losses[mode].backward()
        grads[mode] = {n: p.grad for n, p in module.policy.named_parameters() if p.requires_grad}
    for mode in ("separate", "precomputed"):
        for name, grad in grads["adapter_disabled"].items():
            assert_close(grads[mode][name], grad, rtol=1e-5, atol=1e-7, msg=f"{mode}: {name}")
    separate = modules["separate"].reference_model
    assert not any(p.requires_grad for p in separate.parameters()) and not hasattr(separate, "peft_config")
    modules["separate"].train()
    assert not separate.training  # stays in eval mode when Lightning switches the module to train


def test_reference_from_batch_columns_takes_precedence_over_the_table():
    module = PolicyModule(tiny_spec(), reference="precomputed")
    module.configure_model()
    batch = batch_of(pair_rows(3))
    batch["ref_chosen_logps"] = torch.tensor([-1.0, -2.0, -3.0])
    batch["ref_rejected_logps"] = torch.tensor([-4.0, -5.0, -6.0])
    chosen, rejected = module.reference_logps(batch, "train")
    assert_close(chosen, batch["ref_chosen_logps"])
    assert_close(rejected, batch["ref_rejected_logps"])


def test_precomputed_reference_is_cached_and_training_runs_no_reference_forward(tmp_path, monkeypatch):
    calls = {"reference": 0, "policy": 0}
    original_reference, original_pair = PolicyModule._reference_from_base, PolicyModule.pair_logps

    def counting_reference(self, batch, stage="train"):
        calls["reference"] += 1
        return original_reference(self, batch, stage)

    def counting_pair(self, model, batch):
        calls["policy"] += 1
        return original_pair(self, model, batch)

    monkeypatch.setattr(PolicyModule, "_reference_from_base", counting_reference)
    monkeypatch.setattr(PolicyModule, "pair_logps", counting_pair)
    cache = tmp_path / "cache"

    def fit(seed: int = 0) -> PolicyModule:
        module = PolicyModule(
            tiny_spec(), reference="precomputed", reference_cache_dir=str(cache), reference_batch_size=3
        )
        trainer(tmp_path).fit(module, TinyPairData(n=10, seed=seed))
        return module

    module = fit()
    # One precompute pass: ceil(10 / 3) = 4 reference batches; then 3 training steps with one forward each.
    assert calls == {"reference": 4, "policy": 4 + 3}
    files = list(cache.glob("reference-logps-*.safetensors"))
    assert len(files) == 1
    # The cached values are the SFT model's log-probs of every row.
    rows = TinyPairData(n=10).dataset.to_list()
    fresh = PolicyModule(tiny_spec())
    fresh.configure_model()
    expected = torch.stack(fresh._reference_from_base(batch_of(rows)), dim=1)
    assert_close(module._tables["train"]["reference"], expected, rtol=1e-5, atol=1e-5)

    calls.update(reference=0, policy=0)
    fit()  # same data, same model: read from disk
    assert calls == {"reference": 0, "policy": 3}
    fit(seed=1)  # other data: another key, computed again
    assert calls["reference"] == 4 and len(list(cache.glob("*.safetensors"))) == 2


def test_lora_training_moves_only_adapter_weights_and_leaves_the_reference_fixed(tmp_path):
    module = PolicyModule(tiny_spec(), beta=0.5, optim=OptimConfig(lr=1e-2))
    module.configure_model()
    batch = batch_of(pair_rows(4, seed=3))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    ref_before = module._reference_from_base(batch)
    fit_trainer = trainer(tmp_path, log_every_n_steps=1)
    fit_trainer.fit(module, TinyPairData(n=12))
    moved = {n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n for n in moved)
    assert any("lora_B" in n for n in moved)
    for now, then in zip(module._reference_from_base(batch), ref_before, strict=True):
        assert_close(now, then)
    logged = set(fit_trainer.logged_metrics)
    assert {"train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "rewards/weighted_accuracies", "weights/mean"} <= logged  # fmt: skip


def test_length_sorted_loader_serves_every_row_longest_first():
    data = TinyPairData(n=9)
    loader = length_sorted_loader(data.train_dataloader(), batch_size=4)
    lengths = row_lengths(loader.dataset)
    seen = [int(i) for batch in loader for i in batch["index"]]
    assert sorted(seen) == list(range(9))
    assert [lengths[i] for i in seen] == sorted(lengths, reverse=True)
    tokens = TOKEN_COLUMNS  # what the reference cache key hashes (a wrapper's extra ``index`` is not content)
    assert dataset_fingerprint(data.dataset, tokens) == dataset_fingerprint(IndexedRows(data.dataset), tokens)
    assert dataset_fingerprint(data.dataset, tokens) != dataset_fingerprint(TinyPairData(n=9, seed=1).dataset, tokens)


def test_collect_by_index_refuses_missing_rows():
    batch = batch_of(pair_rows(3))
    with pytest.raises(DataError, match="never appeared"):
        collect_by_index([batch], lambda b: b["weights"][:, None], 5)
