"""What the strong model's SFT stage produces on the synthetic task, next to the data it was trained on.

Reads a ``cwpo run`` folder: for each finished SFT stage (one per label source and seed) its generations on the
test prompts, and prints EOS rate, mean length (tokens and words), the shares of on-topic / off-topic / harmful
words and the mean gold reward ± SE, with the same figures for the chosen and the rejected responses of the
training data (D_U under human labels) and for the pretraining text.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/sft_quality.py runs/default
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from cwpo.data.synthetic import answer_stats, load_synthetic, pretraining_records


def _line(name: str, prompts, responses, tokens=None, limit=None) -> str:
    stats = [answer_stats(p, r) for p, r in zip(prompts, responses, strict=True)]
    n = len(stats)
    gold = [s["gold_reward"] for s in stats]
    mean = sum(gold) / n
    se = math.sqrt(sum((g - mean) ** 2 for g in gold) / (n - 1) / n)
    share = {k: 100 * sum(s[k] for s in stats) / n for k in ("on_topic", "off_topic", "harmful")}
    eos = "–" if tokens is None else f"{100 * sum(t < limit for t in tokens) / n:.1f}"
    length = "–" if tokens is None else f"{sum(tokens) / n:.1f}"
    words = sum(s["words"] for s in stats) / n
    return (f"| {name} | {n} | {eos} | {length} | {words:.1f} | {share['on_topic']:.1f} | {share['off_topic']:.1f} "
            f"| {share['harmful']:.1f} | {mean:.2f} ± {se:.2f} |")  # fmt: skip


def main(run_dir: str) -> None:
    root = Path(run_dir)
    print("| answers | n | EOS (%) | tokens | words | on-topic (%) | off-topic (%) | harmful (%) | gold reward ± SE |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    sft_keys = {p.parent.name: json.loads((p.parent / "inputs.json").read_text()) for p in root.glob("sft/*/DONE.json")}
    for folder in sorted(root.glob("generate/*")):
        inputs = json.loads((folder / "inputs.json").read_text())
        sft = sft_keys.get(inputs["model"])
        if sft is None or not (folder / "DONE.json").exists():
            continue
        records = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines() if line]
        label = next(iter(sft["labels"].items()))
        source = label[1] if len(str(label[1])) < 8 else "labels"
        name = f"SFT seed {inputs['seed']}, {label[0]}: {source}, T = {inputs['eval']['temperature']}"
        print(_line(name, [r["prompt"] for r in records], [r["response"] for r in records],
                    [r["n_new_tokens"] for r in records], inputs["eval"]["max_new_tokens"]))  # fmt: skip
    train = load_synthetic(2400)
    print(_line("data: chosen (human labels)", train["prompt"], train["chosen"]))
    print(_line("data: rejected (human labels)", train["prompt"], train["rejected"]))
    corpus = pretraining_records(2400)
    print(_line("pretraining text", [r["prompt"] for r in corpus], [r["chosen"] for r in corpus]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
