"""Tests of prefix sharing: cwpo/data/prefix_collate.py (the batch) and cwpo/modules/prefix.py (the forward).

The central property: the chosen and rejected log-probs of one prefix-shared forward equal those of the two
separate ``prompt + response`` forwards, for every model family we verify (tiny random models from configs), under
``sdpa`` and ``eager`` attention, with the hidden-state and the full-logits paths, and through a PEFT LoRA wrapper
(values and LoRA gradients). The plain-tensor identity "response-only head == full logits" is in
``tests/losses/test_logps.py::TestResponseLogpsFromHidden::test_matches_sequence_logps_of_full_logits``.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from cwpo.data.prefix_collate import CHOSEN, PADDING, PROMPT, REJECTED, PrefixPairCollator, truncated_lengths
from cwpo.errors import ConfigError
from cwpo.losses import sequence_logps
from cwpo.modules.prefix import (
    check_prefix_sharing,
    prefix_attention_mask,
    prefix_pair_logps,
    prefix_sharing_unsupported_reason,
)

VOCAB = 97
PAD = 0


def tiny_causal_lm(model_type: str, attn: str = "sdpa", seed: int = 0, **overrides):
    """A 2-layer, hidden-64 random model of ``model_type`` (the families we ship configs for, and a few more)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "pad_token_id": PAD,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if model_type == "opt":
        sizes.update(ffn_dim=128, word_embed_proj_dim=64)
    elif model_type == "gpt2":
        sizes = {"vocab_size": VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128}
    else:
        sizes.update(intermediate_size=128, num_key_value_heads=2)
    if model_type == "mistral":
        sizes["sliding_window"] = None
    sizes.update(overrides)
    config = AutoConfig.for_model(model_type, **sizes)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def random_pairs(lengths, seed: int = 0) -> list[dict]:
    """Pairs with the given ``(prompt, chosen, rejected)`` lengths and random token ids (never the pad id)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            name: torch.randint(3, VOCAB, (n,), generator=generator).tolist()
            for name, n in zip(("prompt_ids", "chosen_ids", "rejected_ids"), sizes, strict=True)
        }
        for sizes in lengths
    ]


# A 1-token prompt, an empty chosen (cut away by truncation), a rejected much longer than chosen and the reverse.
EDGE_LENGTHS = [(5, 3, 7), (1, 4, 2), (9, 0, 3), (3, 6, 6), (12, 9, 1)]


def separate_forward_logps(model, pairs, max_length=None, device="cpu"):
    """The reference: the ordinary pair batch (2b rows of prompt + response), log-probs from full logits."""
    rows, labels = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for pair in pairs:
            row = (pair["prompt_ids"] + pair[key])[:max_length]
            n_prompt = min(len(pair["prompt_ids"]), len(row))
            rows.append(row)
            labels.append([-100] * n_prompt + row[n_prompt:])
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), PAD)
    attention_mask = torch.zeros_like(input_ids)
    label_ids = torch.full_like(input_ids, -100)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        label_ids[i, : len(label)] = torch.tensor(label)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    logps, counts = sequence_logps(logits, label_ids.to(device))
    b = len(pairs)
    return logps[:b], logps[b:], counts[:b], counts[b:]


class TestPrefixPairCollator:
    def test_layout_exact(self):
        """Pair (prompt [10, 11, 12], chosen [20, 21], rejected [30, 31, 32]) and a shorter pair for padding.

        Row 0: ids 10 11 12 20 21 30 31 32; positions 0 1 2 3 4 3 4 5 (rejected restarts at the prompt end, 3).
        Chosen token 20 is predicted by position 2 (the last prompt token), 21 by 3. Rejected token 30 is
        predicted by position 2 as well (the last PROMPT position, not the last chosen one, 4), 31 by 5, 32 by 6.
        Row 1 (prompt [40], chosen [50], rejected [60]) starts at flat index 8: 50 and 60 both predicted by 8.
        """
        batch = PrefixPairCollator(pad_token_id=PAD)(
            [
                {"prompt_ids": [10, 11, 12], "chosen_ids": [20, 21], "rejected_ids": [30, 31, 32]},
                {"prompt_ids": [40], "chosen_ids": [50], "rejected_ids": [60]},
            ]
        )
        assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 30, 31, 32], [40, 50, 60, 0, 0, 0, 0, 0]]
        assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 4, 5], [0, 1, 1, 0, 0, 0, 0, 0]]
        P, C, R, X = PROMPT, CHOSEN, REJECTED, PADDING
        assert batch["segment_ids"].tolist() == [[P, P, P, C, C, R, R, R], [P, C, R, X, X, X, X, X]]
        assert batch["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]
        # rows: chosen 0, chosen 1, rejected 0, rejected 1; S = 3 response columns + 1
        assert batch["response_index"].tolist() == [[2, 3, 0, 0], [8, 0, 0, 0], [2, 5, 6, 0], [8, 0, 0, 0]]
        assert batch["response_labels"].tolist() == [
            [-100, 20, 21, -100],
            [-100, 50, -100, -100],
            [-100, 30, 31, 32],
            [-100, 60, -100, -100],
        ]
        assert_close(batch["weights"], torch.ones(2))
        assert batch["index"].tolist() == [0, 1]

    def test_passes_pair_columns_through(self):
        examples = [
            {"prompt_ids": [5], "chosen_ids": [6], "rejected_ids": [7], "confidence": 0.25, "index": 9,
             "ref_chosen_logps": -1.5, "ref_rejected_logps": -2.5, "human_label": 0},
        ]  # fmt: skip
        batch = PrefixPairCollator(pad_token_id=PAD)(examples)
        assert_close(batch["weights"], torch.tensor([0.25]))
        assert batch["index"].tolist() == [9]
        assert_close(batch["ref_chosen_logps"], torch.tensor([-1.5]))
        assert_close(batch["ref_rejected_logps"], torch.tensor([-2.5]))
        assert batch["human_label"].tolist() == [0]

    def test_keep_start_truncation_per_sequence(self):
        """max_length 6, prompt 4: each response keeps 2 tokens (as prompt+chosen and prompt+rejected cut to 6)."""
        assert truncated_lengths(4, 5, 1, 6) == (4, 2, 1)
        assert truncated_lengths(7, 5, 1, 6) == (6, 0, 0)  # a prompt over budget leaves no response
        batch = PrefixPairCollator(pad_token_id=PAD, max_length=6)(
            [{"prompt_ids": [1, 2, 3, 4], "chosen_ids": [5, 6, 7], "rejected_ids": [8, 9, 10]}]
        )
        assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 8, 9]]
        assert batch["response_labels"][:, 1:].tolist() == [[5, 6], [8, 9]]

    def test_keep_end_is_refused(self):
        with pytest.raises(ConfigError, match="keep_start"):
            PrefixPairCollator(pad_token_id=PAD, truncation_mode="keep_end")

    def test_row_without_prompt_scores_no_first_token(self):
        """As in a pair batch (labels[:, 0] is never scored), a response right at position 0 has no predictor."""
        batch = PrefixPairCollator(pad_token_id=PAD)([{"prompt_ids": [], "chosen_ids": [5, 6], "rejected_ids": [7]}])
        assert batch["response_labels"].tolist() == [[-100, -100, 6], [-100, -100, -100]]


class TestPrefixAttentionMask:
    def test_exact(self):
        """Segments P P C R R X: rejected queries (3, 4) see 0, 1 and the rejected keys up to themselves, never 2."""
        segments = torch.tensor([[PROMPT, PROMPT, CHOSEN, REJECTED, REJECTED, PADDING]])
        allowed = prefix_attention_mask(segments, torch.float32)[0, 0] == 0
        expected = torch.tensor(
            [
                [1, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [1, 1, 0, 1, 0, 0],
                [1, 1, 0, 1, 1, 0],
                [0, 0, 0, 0, 0, 1],  # padding query: itself only, so its softmax row is never empty
            ],
            dtype=torch.bool,
        )
        assert torch.equal(allowed, expected)

    def test_additive_float_in_model_dtype(self):
        mask = prefix_attention_mask(torch.tensor([[PROMPT, CHOSEN]]), torch.bfloat16)
        assert mask.shape == (1, 1, 2, 2) and mask.dtype == torch.bfloat16
        assert mask[0, 0, 0, 1] == torch.finfo(torch.bfloat16).min


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "opt", "gpt2", "gemma"]


class TestPrefixForwardEqualsSeparateForwards:
    @pytest.mark.parametrize("attn", ["sdpa", "eager"])
    @pytest.mark.parametrize("model_type", FAMILIES)
    def test_log_probs_equal(self, model_type, attn):
        model = tiny_causal_lm(model_type, attn)
        assert prefix_sharing_unsupported_reason(model) is None
        pairs = random_pairs(EDGE_LENGTHS)
        with torch.no_grad():
            expected = separate_forward_logps(model, pairs)
            for impl in ("hidden", "logits"):
                got = prefix_pair_logps(model, PrefixPairCollator(pad_token_id=PAD)(pairs), logps_impl=impl)
                assert_close(got.chosen_logps, expected[0], atol=1e-4, rtol=0)
                assert_close(got.rejected_logps, expected[1], atol=1e-4, rtol=0)
                assert got.chosen_counts.tolist() == expected[2].tolist()
                assert got.rejected_counts.tolist() == expected[3].tolist()

    def test_with_truncation(self):
        """max_length 8 cuts prompt+response per sequence; both layouts score the same kept tokens."""
        model = tiny_causal_lm("llama")
        pairs = random_pairs(EDGE_LENGTHS, seed=1)
        with torch.no_grad():
            expected = separate_forward_logps(model, pairs, max_length=8)
            got = prefix_pair_logps(model, PrefixPairCollator(pad_token_id=PAD, max_length=8)(pairs))
        assert_close(got.chosen_logps, expected[0], atol=1e-4, rtol=0)
        assert_close(got.rejected_logps, expected[1], atol=1e-4, rtol=0)
        assert got.rejected_counts.tolist() == expected[3].tolist()

    def test_mask_and_position_restart_are_both_needed(self):
        """Control: with plain positions (no restart) or a plain causal mask the rejected log-probs change."""
        model = tiny_causal_lm("llama")
        pairs = random_pairs([(4, 3, 3), (3, 5, 2)])
        batch = PrefixPairCollator(pad_token_id=PAD)(pairs)
        with torch.no_grad():
            expected = separate_forward_logps(model, pairs)
            no_restart = dict(
                batch, position_ids=torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
            )
            chosen_visible = dict(
                batch, segment_ids=batch["segment_ids"].masked_fill(batch["segment_ids"] == REJECTED, CHOSEN)
            )
            for broken in (no_restart, chosen_visible):  # fmt: skip
                got = prefix_pair_logps(model, broken)
                assert_close(got.chosen_logps, expected[0], atol=1e-4, rtol=0)  # chosen is unaffected
                assert (got.rejected_logps - expected[1]).abs().max() > 1e-3


class TestThroughPeft:
    def _lora_model(self):
        from peft import LoraConfig, get_peft_model

        model = tiny_causal_lm("llama")
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        )
        with torch.no_grad():  # a non-zero B so the adapter changes the output
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
        return model

    def test_hidden_path_equals_full_logits_values_and_lora_gradients(self):
        """Response-only LM head on the prefix-shared forward == full logits of two forwards: values and grads."""
        model = self._lora_model()
        pairs = random_pairs(EDGE_LENGTHS, seed=2)
        lora = {name: param for name, param in model.named_parameters() if param.requires_grad}

        def loss_and_grads(fn):
            model.zero_grad(set_to_none=True)
            chosen, rejected = fn()
            (chosen.sum() - 0.5 * rejected.sum()).backward()
            return chosen.detach(), rejected.detach(), {name: param.grad.clone() for name, param in lora.items()}

        expected = loss_and_grads(lambda: separate_forward_logps(model, pairs)[:2])
        batch = PrefixPairCollator(pad_token_id=PAD)(pairs)
        got = loss_and_grads(lambda: prefix_pair_logps(model, batch, logps_impl="hidden")[:2])
        assert_close(got[0], expected[0], atol=1e-4, rtol=0)
        assert_close(got[1], expected[1], atol=1e-4, rtol=0)
        for name in lora:
            assert_close(got[2][name], expected[2][name], atol=1e-4, rtol=1e-3)

    def test_adapter_disabled_gives_the_base_model(self):
        """The reference (adapter off) from the prefix forward equals the base model's separate forwards."""
        model = self._lora_model()
        pairs = random_pairs(EDGE_LENGTHS, seed=3)
        batch = PrefixPairCollator(pad_token_id=PAD)(pairs)
        with torch.no_grad():
            with model.disable_adapter():
                reference = prefix_pair_logps(model, batch)
            with model.disable_adapter():
                base = separate_forward_logps(model, pairs)
            policy = prefix_pair_logps(model, batch)
        assert_close(reference.chosen_logps, base[0], atol=1e-4, rtol=0)
        assert (policy.chosen_logps - reference.chosen_logps).abs().max() > 1e-3


class TestRefusals:
    def test_flash_attention_is_refused(self):
        model = tiny_causal_lm("llama")
        model.config._attn_implementation = "flash_attention_2"
        with pytest.raises(ConfigError, match="4D mask"):
            check_prefix_sharing(model)

    def test_sliding_window_is_refused(self):
        model = tiny_causal_lm("mistral", sliding_window=4)
        assert "sliding" in prefix_sharing_unsupported_reason(model)

    def test_unverified_family_needs_opt_in(self):
        model = tiny_causal_lm("llama")
        model.config.model_type = "somethingnew"
        assert "not verified" in prefix_sharing_unsupported_reason(model)
        assert prefix_sharing_unsupported_reason(model, allow_unverified=True) is None

    def test_soft_capped_head_needs_the_logits_path(self):
        model = tiny_causal_lm("llama")
        model.config.final_logit_softcapping = 30.0
        assert "logits" in prefix_sharing_unsupported_reason(model, "hidden")
        assert prefix_sharing_unsupported_reason(model, "logits") is None


class TestPolicyModuleIntegration:
    """``PolicyModule(prefix_sharing=True)`` on prefix batches == ``prefix_sharing=False`` on pair batches."""

    def _module(self, **kwargs):
        from cwpo.models import LoraSpec
        from cwpo.modules.policy import PolicyModule
        from tests.tiny import tiny_spec

        module = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0), **kwargs)
        module.configure_model()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a policy that differs from its reference
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        return module

    def _batches(self):
        from cwpo.data.collate import PairCollator

        pairs = [dict(pair, confidence=c, index=i) for i, (pair, c) in enumerate(zip(
            random_pairs(EDGE_LENGTHS, seed=4), [1.0, 0.5, 0.25, 0.75, 1.0], strict=True))]  # fmt: skip
        return PairCollator(pad_token_id=PAD)(pairs), PrefixPairCollator(pad_token_id=PAD)(pairs)

    @pytest.mark.parametrize("logps_impl", ["hidden", "logits"])
    def test_same_loss_metrics_and_gradients(self, logps_impl):
        pair_batch, prefix_batch = self._batches()
        results = []
        for prefix_sharing, batch in ((False, pair_batch), (True, prefix_batch)):
            module = self._module(logps_impl=logps_impl, prefix_sharing=prefix_sharing)
            loss, metrics = module.compute_loss(batch)
            loss.backward()
            grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
            results.append((loss.detach(), metrics, grads))
        (loss_pair, metrics_pair, grads_pair), (loss_prefix, metrics_prefix, grads_prefix) = results
        assert_close(loss_prefix, loss_pair, atol=1e-5, rtol=1e-5)
        for name in metrics_pair:
            assert_close(metrics_prefix[name], metrics_pair[name], atol=1e-5, rtol=1e-4)
        for name in grads_pair:
            assert_close(grads_prefix[name], grads_pair[name], atol=1e-5, rtol=1e-3)

    def test_mismatched_batch_is_a_config_error(self):
        pair_batch, prefix_batch = self._batches()
        with pytest.raises(ConfigError, match="prefix_sharing"):
            self._module(prefix_sharing=True).compute_loss(pair_batch)
        with pytest.raises(ConfigError, match="prefix_sharing"):
            self._module(prefix_sharing=False).compute_loss(prefix_batch)

    def test_unsupported_model_falls_back_to_two_rows(self):
        pair_batch, prefix_batch = self._batches()
        expected, _ = self._module().compute_loss(pair_batch)
        module = self._module(prefix_sharing=True)
        module.policy.get_base_model().config.model_type = "not-verified"
        with pytest.warns(UserWarning, match="two rows per pair"):
            loss, _ = module.compute_loss(prefix_batch)
        assert_close(loss, expected, atol=1e-5, rtol=1e-5)

    def test_fit_with_prefix_sharing_datamodule_and_precomputed_reference(self, tmp_path):
        """End to end: PairDataModule(prefix_sharing=True) batches, the reference precomputed through the prefix
        path, two optimiser steps; the reference table equals the two-row pass on the same data."""
        import lightning as L

        from cwpo.data import PairDataModule

        def fit(prefix_sharing):
            data = PairDataModule(dataset={"name": "synthetic", "args": {"n_pairs": 40}}, tokenizer="synthetic",
                                  part="train", max_length=48, batch_size=4, prefix_sharing=prefix_sharing)  # fmt: skip
            module = self._module(reference="precomputed", reference_cache_dir=str(tmp_path / str(prefix_sharing)),
                                  prefix_sharing=prefix_sharing)  # fmt: skip
            trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
                                default_root_dir=tmp_path)  # fmt: skip
            trainer.fit(module, datamodule=data)
            assert trainer.global_step == 2
            batch = next(iter(data.train_dataloader()))
            assert ("segment_ids" in batch) == prefix_sharing
            return module._tables["train"]["reference"]

        assert_close(fit(True), fit(False), atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "opt"])
def test_prefix_forward_on_cuda(model_type, attn, dtype):
    """On CUDA (SDPA picks other kernels there) the prefix-shared log-probs still equal two separate forwards.

    fp32 to 1e-4 (TF32 off); bf16 to 0.1 on sums of up to 9 token log-probs: bf16 rounds each hidden state to 3
    significant digits, and the two layouts round in different orders. Also checks the LoRA gradient in fp32.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_causal_lm(model_type, attn).to("cuda", dtype)
    pairs = random_pairs(EDGE_LENGTHS, seed=5)
    batch = {key: value.cuda() for key, value in PrefixPairCollator(pad_token_id=PAD)(pairs).items()}
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    with torch.no_grad():
        ids = separate_forward_logps(model, pairs, device="cuda")
        got = prefix_pair_logps(model, batch)
    print(f"{model_type} {attn} {dtype}: max |diff| {(torch.cat(got[:2]) - torch.cat(ids[:2])).abs().max().item():.2e}")
    assert_close(got.chosen_logps, ids[0], atol=tolerance, rtol=0)
    assert_close(got.rejected_logps, ids[1], atol=tolerance, rtol=0)
    assert got.rejected_counts.tolist() == ids[3].tolist()
