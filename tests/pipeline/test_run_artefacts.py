"""What a micro ``cwpo run`` leaves behind describes itself: every PO adapter loads with
``AutoPeftModelForCausalLM`` from another working folder on the right (SFT-merged) base, and the cards of the
policies, the WS-DPO weak policy and the annotator carry their method's title, data and eval numbers."""

from __future__ import annotations

import json

import pytest
import torch

from cwpo.models import LoraSpec
from cwpo.pipeline.experiment import Experiment
from tests.pipeline.test_experiment import micro_config

pytestmark = pytest.mark.slow


def test_a_run_with_lora_sft_and_po_exports_adapters_that_load_anywhere_with_filled_cards(tmp_path, monkeypatch):
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForCausalLM

    from cwpo.modules.causal_lm import build_causal_lm, merge_adapter

    monkeypatch.chdir(tmp_path)
    config = micro_config("runs/micro", ["cw-dpo", "ws-dpo"])  # a relative run_dir, as by default
    config.sft.model.lora = LoraSpec(r=4, alpha=8, dropout=0.0)
    config.policy.model.lora = LoraSpec(r=4, alpha=8, dropout=0.0)
    experiment = Experiment(config)
    rows = experiment.run()

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    po_folders = sorted((tmp_path / "runs/micro/po").glob("*/adapter"))
    assert len(po_folders) == 2
    ids = torch.tensor([[3, 9, 14, 20, 7, 2]])
    for folder in po_folders:
        config_json = json.loads((folder / "adapter_config.json").read_text())
        base = config_json["base_model_name_or_path"]
        assert base.startswith(str(tmp_path / "runs/micro/sft")) and base.endswith("/adapter/merged"), base
        loaded = AutoPeftModelForCausalLM.from_pretrained(str(folder)).eval()
        # the model the pipeline evaluated: its base spec + SFT adapter, then this adapter merged
        backbone = json.loads((folder / "cwpo_backbone.json").read_text())
        from cwpo.models import as_model_spec

        spec = as_model_spec(backbone["backbone"])
        assert backbone["init_adapter"].startswith("/") and spec.name_or_path.startswith("/")
        evaluated = merge_adapter(build_causal_lm(spec, init_adapter=backbone["init_adapter"], trainable=False),
                                  str(folder)).eval()  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).logits, evaluated(input_ids=ids).logits, rtol=1e-4,
                                       atol=1e-4)  # fmt: skip

        card = ModelCard.load(folder / "README.md")
        method = next(r for r in rows if f"method {r['method']}," in card.data.model_name)
        results = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert results["gra"] == pytest.approx(method["gra"]) and "heldout_gold_accuracy" in results
        assert "weighting=uniform" not in card.text

    titles = [ModelCard.load(p / "README.md").data.model_name for p in po_folders]
    assert sorted(t.split(" policy")[0] for t in titles) == ["CW-PO DPO", "WS-DPO DPO"]
    (weak_policy,) = (tmp_path / "runs/micro/ws_policy").glob("*/model")
    assert ModelCard.load(weak_policy / "README.md").data.model_name.startswith("WS-DPO weak policy (seed 0)")
    (annotator,) = (tmp_path / "runs/micro/annotator").glob("*/annotator")
    card = ModelCard.load(annotator / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "AutoModelForSequenceClassification" in card.text
    assert {r.metric_type for r in card.data.eval_results} == {"annotator_val_accuracy", "weak_label_agreement"}
