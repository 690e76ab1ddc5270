"""Numerics and safety: no NaN/inf at extreme values, stable half-precision paths, no unpickling of untrusted files,
no remote code unless asked for.

What ``tests/losses/`` already covers is not repeated: exact values, ±1e4 log-ratios per objective in float32,
bfloat16 and float16 (finite losses and gradients), bf16 inputs giving the float32 loss, a zero weight giving zero
gradient, ``normalized`` with all weights 0. Added here: the two together (all weights 0 *and* ±1e4 log-ratios, for
every objective, reduction and dtype), the confidence schemes at extreme margins, and the policy's whole loss under
CPU bfloat16 autocast with all weights 0 (the metrics' divisions too).
"""

from __future__ import annotations

import ast
import functools
import pathlib
from pathlib import Path

import pytest
import torch

from cwpo.losses import OBJECTIVES, REDUCTIONS, confidence_from_margin, weighted_loss
from cwpo.losses.confidence import CONFIDENCE_SCHEMES

CWPO = Path(__file__).resolve().parents[2] / "cwpo"


@functools.cache
def _trees() -> tuple[tuple[Path, tuple[ast.AST, ...]], ...]:
    """Every node of every module of ``cwpo/``, parsed once."""
    return tuple((path, tuple(ast.walk(ast.parse(path.read_text())))) for path in sorted(CWPO.rglob("*.py")))


def _calls(name: str):
    """``(file, call)`` for every call in ``cwpo/`` of a function or method called ``name``."""
    for path, nodes in _trees():
        for node in nodes:
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield path.relative_to(CWPO.parent), node


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


# --------------------------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------------------------

OBJECTIVE_KWARGS = {"dpo": {"beta": 0.1}, "ipo": {"tau": 0.1}, "rdpo": {"beta": 0.1, "epsilon": 0.1}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("objective", sorted(OBJECTIVE_KWARGS))
def test_extreme_logratios_with_all_weights_zero_give_zero_loss_and_zero_gradient(objective, reduction, dtype):
    assert set(OBJECTIVE_KWARGS) == set(OBJECTIVES)  # a new objective must be added here
    chosen = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-1e4, 1e4, 1e4, -1e4, 0.0], dtype=dtype, requires_grad=True)
    per_pair = OBJECTIVES[objective](chosen, rejected, **OBJECTIVE_KWARGS[objective])
    loss = weighted_loss(per_pair, torch.zeros(5, dtype=dtype), reduction)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    assert torch.equal(chosen.grad, torch.zeros_like(chosen)) and torch.equal(rejected.grad, torch.zeros_like(rejected))


@pytest.mark.parametrize("scheme", sorted(CONFIDENCE_SCHEMES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_confidence_at_extreme_margins_is_finite(scheme, dtype):
    margins = torch.tensor([1e4, -1e4, 0.0, 3e38 if dtype != torch.float16 else 6e4], dtype=dtype)
    confidence = confidence_from_margin(margins, scheme)
    assert torch.isfinite(confidence).all() and (confidence >= 0).all()
    if scheme in ("cw", "sigmoid", "uniform", "minmax"):
        assert (confidence <= 1).all()


def test_policy_loss_under_bf16_autocast_with_all_weights_zero_is_finite():
    """The policy's whole step (bf16 forward, float32 log-probs and loss, the metrics' divisions) on a batch whose
    weights are all 0 gives a zero loss, finite metrics and finite (zero) adapter gradients."""
    from cwpo.models import LoraSpec, ModelSpec
    from cwpo.modules.policy import PolicyModule

    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64}  # fmt: skip
    module = PolicyModule(ModelSpec("synthetic", config=config, from_scratch=True), lora=LoraSpec(dropout=0.0))
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    pairs, width = 3, 9
    input_ids = torch.randint(10, 100, (2 * pairs, width), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[[0, 4], 6:] = 0
    labels = torch.where(attention_mask.bool(), input_ids, -100)
    labels[:, :3] = -100
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "weights": torch.zeros(pairs), "index": torch.arange(pairs)}  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = module.compute_loss(batch)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    assert all(torch.isfinite(value).all() for value in metrics.values())
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is None or (torch.isfinite(g).all() and not g.any()) for g in grads)


# --------------------------------------------------------------------------------------------------------------
# No unpickling of untrusted files
# --------------------------------------------------------------------------------------------------------------


def test_every_torch_load_in_cwpo_passes_weights_only_true():
    calls = list(_calls("load"))
    torch_loads = [
        (f, c) for f, c in calls if isinstance(c.func, ast.Attribute) and getattr(c.func.value, "id", "") == "torch"
    ]
    assert torch_loads, "expected cwpo.annotation.loading's checkpoint reader"
    for file, call in torch_loads:
        value = _keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, (
            f"{file}:{call.lineno} torch.load without weights_only=True"
        )


def test_no_pickle_based_readers_in_cwpo():
    risky_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    for path, nodes in _trees():
        for node in nodes:
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & risky_modules, f"{path}:{node.lineno}"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in risky_modules, f"{path}:{node.lineno}"
    for name in ("read_pickle", "load_pickle"):
        assert not list(_calls(name))
    for file, call in _calls("load"):  # np.load only without allow_pickle=True
        value = _keyword(call, "allow_pickle")
        assert value is None or (isinstance(value, ast.Constant) and value.value is False), f"{file}:{call.lineno}"


class CreatesAFileWhenUnpickled:
    """A pickle payload: unpickling it runs ``Path.touch(marker)``, which ``weights_only=True`` refuses to call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _malicious(path: Path, marker: Path, payload: dict) -> Path:
    torch.save({**payload, "surprise": CreatesAFileWhenUnpickled(marker)}, path)
    return path


def test_resuming_or_reading_a_malicious_checkpoint_runs_no_code(tmp_path, monkeypatch):
    """A checkpoint that runs code when unpickled: ``--ckpt_path`` (Lightning's loader, torch's ``weights_only``
    default), ``cwpo.annotation.loading.load_checkpoint`` and a ``pytorch_model.bin`` (transformers'
    ``weights_only`` loader) all refuse it, and the code never runs."""
    from tests.reliability.conftest import REPO, fit_args, fit_in_process

    monkeypatch.chdir(REPO)
    marker = tmp_path / "code-ran"
    evil = _malicious(tmp_path / "evil.ckpt", marker, {"state_dict": {}, "global_step": 3, "hyper_parameters":
                                                       {"annotator_type": "bt"}})  # fmt: skip

    with pytest.raises(Exception, match="(?i)weights.only|unpickl|unsupported global"):
        fit_in_process("annotator", fit_args("annotator", tmp_path / "run", extra=["--ckpt_path", str(evil)]))
    assert not marker.exists()

    from cwpo.annotation.loading import load_checkpoint

    with pytest.raises(Exception, match="(?i)weights.only|unpickl|unsupported global"):
        load_checkpoint(evil)
    assert not marker.exists()

    from transformers import LlamaConfig

    from cwpo.models import ModelSpec, load_causal_lm

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=200).save_pretrained(model_dir)  # fmt: skip
    _malicious(model_dir / "pytorch_model.bin", marker, {"model.embed_tokens.weight": torch.zeros(200, 16)})
    from cwpo.data.synthetic import build_tokenizer

    with pytest.raises(Exception, match="(?i)weights.only|unpickl|unsupported global"):
        load_causal_lm(ModelSpec(str(model_dir)), tokenizer=build_tokenizer())
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------
# No remote code unless asked for
# --------------------------------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_by_default_and_never_switched_on_in_code():
    import dataclasses

    from cwpo.models import ModelSpec

    field = {f.name: f for f in dataclasses.fields(ModelSpec)}["trust_remote_code"]
    assert field.default is False
    for path, nodes in _trees():
        for node in nodes:
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), f"{path}"
            if isinstance(node, ast.Dict):  # kwargs dicts such as {"trust_remote_code": True}
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                        assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}"


def test_load_dataset_never_enables_remote_code():
    """Every ``load_dataset`` call and every caller of the hub reader (which forwards its keyword arguments)
    leaves ``trust_remote_code`` unset: datasets' default (off) holds."""
    calls = [*_calls("load_dataset"), *_calls("hub_rows")]
    assert calls
    for file, call in calls:
        assert _keyword(call, "trust_remote_code") is None, f"{file}:{call.lineno}"
        for keyword in call.keywords:
            if keyword.arg is None and isinstance(keyword.value, ast.Dict):
                keys = {k.value for k in keyword.value.keys if isinstance(k, ast.Constant)}
                assert "trust_remote_code" not in keys, f"{file}:{call.lineno}"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("trust", [False, True])
def test_model_spec_passes_trust_remote_code_to_every_transformers_loader(trust, monkeypatch):
    """Tokenizer, config and weights loaders all receive the spec's ``trust_remote_code`` explicitly."""
    import transformers

    from cwpo.models import ModelSpec, load_causal_lm, load_sequence_classifier, load_tokenizer

    seen: list[tuple[str, object]] = []

    def recorder(what: str, result=None):
        def load(*args, **kwargs):
            seen.append((what, kwargs.get("trust_remote_code", "missing")))
            if result is None:
                raise _Stop
            return result

        return classmethod(lambda cls, *a, **k: load(*a, **k))

    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    monkeypatch.setattr("cwpo.models.check_model_source", lambda name: None)  # no hub here: the loaders are fakes
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recorder("tokenizer"))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", recorder("config", config))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recorder("causal_lm"))
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", recorder("classifier"))
    spec = ModelSpec("some-org/some-model", trust_remote_code=trust)
    tokenizer = type("Tok", (), {"pad_token_id": 0})()
    for load in (lambda: load_tokenizer(spec), lambda: load_causal_lm(spec, tokenizer=tokenizer),
                 lambda: load_sequence_classifier(spec, tokenizer=tokenizer)):  # fmt: skip
        with pytest.raises(_Stop):
            load()
    assert seen == [("tokenizer", trust), ("config", trust), ("causal_lm", trust), ("config", trust),
                    ("classifier", trust)]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# On a GPU (pytest -m gpu): real float16 / bfloat16 autocast kernels, GradScaler included
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("objective", sorted(OBJECTIVE_KWARGS))
def test_cuda_extreme_logratios_and_zero_weights_stay_finite(objective, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    chosen = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.5], dtype=dtype, device="cuda", requires_grad=True)
    rejected = torch.tensor([-1e4, 1e4, 1e4, -1e4, 0.0], dtype=dtype, device="cuda", requires_grad=True)
    for weights in (torch.zeros(5, device="cuda"), torch.ones(5, device="cuda")):
        for reduction in REDUCTIONS:
            per_pair = OBJECTIVES[objective](chosen, rejected, **OBJECTIVE_KWARGS[objective])
            loss = weighted_loss(per_pair, weights.to(dtype), reduction)
            (grad_chosen,) = torch.autograd.grad(loss, chosen)
            assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad_chosen).all()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_policy_trains_finite_under_cuda_mixed_precision(precision):
    """A tiny policy trained by Lightning under mixed precision (float16 with its GradScaler, or bfloat16), on
    batches whose weights are all 0 for every other step and with a large LoRA perturbation: every loss, metric
    and weight stays finite."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import lightning as L
    from torch.utils.data import DataLoader

    from cwpo.models import LoraSpec, ModelSpec
    from cwpo.modules.optim import OptimConfig
    from cwpo.modules.policy import PolicyModule

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64}  # fmt: skip
    module = PolicyModule(ModelSpec("synthetic", config=config, from_scratch=True), lora=LoraSpec(dropout=0.0),
                          optim=OptimConfig(lr=5e-2, warmup_steps=0, scheduler="constant"), beta=0.5)  # fmt: skip
    module.configure_model()
    with torch.no_grad():  # a policy far from its reference: large log-ratios
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    batches = []
    for step in range(8):
        input_ids = torch.randint(10, 100, (8, 24), generator=g)
        labels = input_ids.clone()
        labels[:, :8] = -100
        weights = torch.zeros(4) if step % 2 else torch.rand(4, generator=g)
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
                        "weights": weights, "index": torch.arange(4)})  # fmt: skip
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cuda", devices=1, precision=precision, max_steps=8, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Record()])  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert all(loss == 0.0 for loss in losses[1::2])  # all-zero weights: exactly 0
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in trainer.callback_metrics.values())
