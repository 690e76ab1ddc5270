"""Throughput of one CW-DPO epoch on a tiny model, by reference mode (CPU, this machine).

    python benchmarks/policy_throughput.py                       # modes adapter_disabled and precomputed
    python benchmarks/policy_throughput.py --pairs 512 --modes adapter_disabled separate precomputed

Prints, per mode, tokens/s (real, non-padding tokens of the 2b rows of each step) and pairs/s of the training
epoch, and for ``precomputed`` the one-off time of the reference pass (cached on disk afterwards; a second run of
the same data and model reads it in milliseconds). Each mode trains the same data, model and seed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=256, help="training pairs (synthetic task, D_U)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny Llama")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--modes", nargs="+", default=["adapter_disabled", "precomputed"])
    args = parser.parse_args(argv)

    import lightning as L
    import torch

    from cwpo.data import PairDataModule
    from cwpo.models import ModelSpec
    from cwpo.modules.optim import OptimConfig
    from cwpo.modules.policy import PolicyModule

    torch.set_num_threads(args.threads)
    spec = ModelSpec(
        "synthetic",
        from_scratch=True,
        config={
            "model_type": "llama",
            "hidden_size": args.hidden,
            "intermediate_size": 2 * args.hidden,
            "num_hidden_layers": args.layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        },
    )

    class Meter(L.Callback):
        """Wall time of the training epoch, and the pairs and real tokens it saw."""

        def on_train_epoch_start(self, trainer, module):
            self.pairs = self.tokens = 0
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.pairs += batch["input_ids"].shape[0] // 2
            self.tokens += int(batch["attention_mask"].sum())  # a host read, outside the step

        def on_train_epoch_end(self, trainer, module):
            self.seconds = time.perf_counter() - self.start

    print(f"CW-DPO, tiny Llama (hidden {args.hidden}, {args.layers} layers, LoRA r 8), {args.pairs} synthetic pairs, "
          f"batch {args.batch_size}, max_length {args.max_length}, {args.threads} CPU threads, torch {torch.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        for mode in args.modes:
            data = PairDataModule(dataset="synthetic", tokenizer="synthetic", part="d_u", limit=args.pairs,
                                  max_length=args.max_length, batch_size=args.batch_size)  # fmt: skip
            module = PolicyModule(spec, beta=0.5, reference=mode, optim=OptimConfig(lr=1e-3),
                                  reference_cache_dir=os.path.join(root, "cache"))  # fmt: skip
            meter = Meter()
            trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                                callbacks=[meter], default_root_dir=root)  # fmt: skip
            L.seed_everything(0, verbose=False)
            start = time.perf_counter()
            trainer.fit(module, data)
            total = time.perf_counter() - start
            setup = total - meter.seconds
            print(f"RESULT mode={mode} tokens_per_s={meter.tokens / meter.seconds:.0f} "
                  f"pairs_per_s={meter.pairs / meter.seconds:.1f} epoch_s={meter.seconds:.2f} "
                  f"setup_s={setup:.2f} (setup includes data and model building"
                  f"{', and the one-off reference pass' if mode == 'precomputed' else ''})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
