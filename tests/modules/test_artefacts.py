"""Exported artefacts describe themselves: ``AutoPeftModelForCausalLM`` loads every adapter from any working folder
(the right base, stacked adapters included), model cards are ``huggingface_hub`` cards, and ``cwpo export
--push_to_hub`` uploads adapters and annotated datasets (to a local stand-in for the hub, never the network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from cwpo.errors import run_command
from cwpo.models import LoraSpec, ModelSpec, load_causal_lm
from cwpo.modules.export import hub_base_model, loadable_base, main, update_card
from cwpo.modules.policy import PolicyModule
from cwpo.modules.sft import SFTModule
from tests.tiny import tiny_spec

IDS = torch.tensor([[5, 17, 33, 48, 90, 101, 2], [7, 8, 9, 10, 11, 2, 0]])
MASK = torch.tensor([[1] * 7, [1] * 6 + [0]])


def _perturb(module, seed: int) -> None:
    """Non-zero LoRA B matrices, so an adapter changes the outputs (a fresh one is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


def _auto_peft_logits(folder: str) -> torch.Tensor:
    from peft import AutoPeftModelForCausalLM

    return _logits(AutoPeftModelForCausalLM.from_pretrained(folder))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working folder unrelated to the one the artefacts were written from."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    return other


def test_an_adapter_on_a_random_init_base_loads_with_auto_peft_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0))
    module.configure_model()
    _perturb(module, 0)
    module.save_adapter("runs/po/adapter")  # a relative folder, as cwpo run writes them
    expected = _logits(module.policy)
    config = json.loads((tmp_path / "runs/po/adapter/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "runs/po/adapter/base")  # saved, absolute
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert_close(_auto_peft_logits("../runs/po/adapter"), expected)


def test_an_adapter_on_a_local_folder_names_it_by_absolute_path_and_saves_no_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load_causal_lm(tiny_spec(3)).save_pretrained("models/base")
    module = PolicyModule(ModelSpec("models/base", tokenizer="synthetic"), lora=LoraSpec(dropout=0.0))
    module.configure_model()
    _perturb(module, 1)
    module.save_adapter("adapter")
    expected = _logits(module.policy)
    config = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "models/base")
    assert not (tmp_path / "adapter/base").exists()
    backbone = json.loads((tmp_path / "adapter/cwpo_backbone.json").read_text())["backbone"]
    assert backbone["name_or_path"] == str(tmp_path / "models/base")  # merge works from elsewhere too
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert_close(_auto_peft_logits(str(tmp_path / "adapter")), expected)
    assert main(["merge", str(tmp_path / "adapter"), "merged"]) == 0
    from transformers import AutoModelForCausalLM

    assert_close(_logits(AutoModelForCausalLM.from_pretrained("merged")), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sft_merged", [True, False], ids=["sft-exported-merged", "two-step-load"])
def test_a_stacked_adapter_never_loads_on_the_bare_base(tmp_path, monkeypatch, sft_merged):
    """LoRA SFT, then LoRA PO on top: the PO adapter's base is the SFT-merged model ``<sft>/merged``, so AutoPeft
    gives the trained policy, not base + PO adapter. Without SFT's merged export, loading fails (no such folder)
    until ``cwpo export merge`` writes it."""
    monkeypatch.chdir(tmp_path)
    sft = SFTModule(tiny_spec(), lora=LoraSpec(dropout=0.0), export_dir="sft/adapter", export_merged=sft_merged)
    sft.configure_model()
    _perturb(sft, 2)
    sft.save_adapter("sft/adapter")
    policy = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0), init_adapter="sft/adapter")
    policy.configure_model()
    _perturb(policy, 3)
    policy.save_adapter("po/adapter")
    expected = _logits(policy.policy)
    config = json.loads((tmp_path / "po/adapter/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "sft/adapter/merged")
    assert not (tmp_path / "po/adapter/base").exists()  # no copy of the base per stacked adapter
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    if not sft_merged:
        with pytest.raises(OSError):  # loudly, never on the wrong base
            _auto_peft_logits(str(tmp_path / "po/adapter"))
        assert main(["merge", str(tmp_path / "sft/adapter"), str(tmp_path / "sft/adapter/merged")]) == 0
    assert_close(_auto_peft_logits(str(tmp_path / "po/adapter")), expected)
    # what it would give on the bare base differs: the check above can tell the two apart
    from peft import PeftModel

    bare = PeftModel.from_pretrained(load_causal_lm(tiny_spec()), str(tmp_path / "po/adapter"))
    assert not torch.allclose(_logits(bare), expected, atol=1e-3)


def test_base_references_are_hub_ids_or_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub = ModelSpec("facebook/opt-125m")
    assert loadable_base(hub) == hub_base_model(hub) == "facebook/opt-125m"
    assert loadable_base(tiny_spec()) is None and hub_base_model(tiny_spec()) is None  # random init: saved
    assert loadable_base(ModelSpec("x", gguf_file="m.gguf")) is None  # GGUF: dequantised and saved
    (tmp_path / "local").mkdir()
    assert loadable_base(ModelSpec("local")) == str(tmp_path / "local")


def test_the_model_card_is_a_hub_card_with_base_model_datasets_settings_and_eval_numbers(tmp_path):
    from huggingface_hub import ModelCard

    module = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0), objective="ipo")
    module.configure_model()
    module.save_adapter(str(tmp_path / "adapter"))
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert card.data.base_model is None  # random init has no hub base (no local path here)
    assert "AutoPeftModelForCausalLM.from_pretrained" in card.text and '`objective`: `"ipo"`' in card.text
    update_card(tmp_path / "adapter", title="CW-IPO policy (seed 0)", eval={"gra": 61.5, "gra_se": 2.1},
                datasets=[{"id": "Anthropic/hh-rlhf", "name": "hh-rlhf"}],
                eval_dataset={"id": "Anthropic/hh-rlhf", "name": "hh-rlhf test"})  # fmt: skip
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.model_name == "CW-IPO policy (seed 0)" and card.data.datasets == ["Anthropic/hh-rlhf"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"gra": 61.5, "gra_se": 2.1}
    assert card.text.startswith("\n# CW-IPO policy (seed 0)") and "| gra | 61.5 |" in card.text


def test_a_card_names_the_hub_base_of_a_local_cwpo_export(tmp_path):
    """SFT on a hub model saved locally, PO on that folder: the PO card's base_model is the hub id, not the path."""
    from huggingface_hub import ModelCard

    from cwpo.modules.export import card_info, write_card

    folder = tmp_path / "sft_model"
    load_causal_lm(tiny_spec()).save_pretrained(str(folder))
    write_card(folder, card_info(title="SFT", backbone=ModelSpec("Qwen/Qwen2.5-0.5B"), init_adapter=None,
                                 hparams={}, library_name="transformers"))  # fmt: skip
    assert ModelCard.load(folder / "README.md").data.base_model == "Qwen/Qwen2.5-0.5B"
    assert hub_base_model(ModelSpec(str(folder))) == "Qwen/Qwen2.5-0.5B"


class FakeHub:
    """Stands in for the hub: ``HfApi.create_repo`` / ``upload_folder`` copy into a local folder."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def install(self, monkeypatch) -> None:
        from huggingface_hub import HfApi

        hub = self

        def create_repo(self, repo_id, *, repo_type=None, private=False, exist_ok=False, **kw):
            hub.calls.append(("create_repo", repo_id, repo_type, private))
            return f"https://hub.invalid/{repo_id}"

        def upload_folder(self, *, folder_path, repo_id, repo_type=None, ignore_patterns=None, **kw):
            hub.calls.append(("upload_folder", repo_id, repo_type))
            ignore = shutil.ignore_patterns(*[p.rstrip("/*") for p in ignore_patterns or []])
            shutil.copytree(folder_path, hub.root / repo_id, ignore=ignore, dirs_exist_ok=True)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_export_push_to_hub_uploads_a_merged_model_and_refuses_an_adapter_on_a_local_base(tmp_path, capsys,
                                                                                          monkeypatch):  # fmt: skip
    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    module = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0))
    module.configure_model()
    _perturb(module, 4)
    module.save_adapter(str(tmp_path / "adapter"))
    assert run_command(main, ["adapter", str(tmp_path / "adapter"), "--push_to_hub", "me/adapter"]) == 2
    assert "nobody else can load; push the merged model instead" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "adapter"), str(tmp_path / "merged"), "--push_to_hub", "me/cw-dpo"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "pushed to https://hub.invalid/me/cw-dpo"
    from transformers import AutoModelForCausalLM

    pushed = AutoModelForCausalLM.from_pretrained(str(hub.root / "me/cw-dpo"))
    assert_close(_logits(pushed), _logits(module.policy), rtol=1e-5, atol=1e-5)
    assert "library_name: transformers" in (hub.root / "me/cw-dpo/README.md").read_text()


def test_export_push_to_hub_uploads_an_adapter_on_a_hub_base_without_its_local_copies(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    folder = tmp_path / "adapter"
    module = PolicyModule(tiny_spec(), lora=LoraSpec(dropout=0.0))
    module.configure_model()
    module.save_adapter(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/base"}))
    assert main(["adapter", str(folder), "--push_to_hub", "me/adapter", "--private", "true"]) == 0
    assert hub.calls == [("create_repo", "me/adapter", "model", True), ("upload_folder", "me/adapter", "model")]
    assert {p.name for p in (hub.root / "me/adapter").iterdir()} >= {"adapter_model.safetensors", "README.md"}
    assert not (hub.root / "me/adapter/base").exists()


def test_export_push_to_hub_uploads_an_annotated_dataset_that_loads_back(tmp_path, monkeypatch):
    import datasets

    from cwpo.data.files import save_pairs

    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    rows = [{"id": f"r{i}", "prompt": f"p {i}", "chosen": f"a {i}", "rejected": f"b {i}", "human_label": i % 2,
             "confidence": 0.1 * i, "weak_score_chosen": 1.0, "weak_score_rejected": 0.5} for i in range(5)]  # fmt: skip
    save_pairs(datasets.Dataset.from_list(rows), tmp_path / "d_u_labelled.jsonl")
    assert main(["dataset", str(tmp_path / "d_u_labelled.jsonl"), "--push_to_hub", "me/weak-labels"]) == 0
    assert hub.calls[0] == ("create_repo", "me/weak-labels", "dataset", False)
    pushed = datasets.load_dataset(str(hub.root / "me/weak-labels"), split="train")  # the card's configs
    assert pushed["confidence"] == pytest.approx([0.1 * i for i in range(5)]) and len(pushed) == 5
    assert "confidence" in (hub.root / "me/weak-labels/README.md").read_text()


def test_export_dataset_refuses_a_file_that_breaks_the_schema(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "chosen": "a"}\n')
    assert run_command(main, ["dataset", str(tmp_path / "bad.jsonl"), "--out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl" in err and "rejected" in err and len(err.splitlines()) <= 2
