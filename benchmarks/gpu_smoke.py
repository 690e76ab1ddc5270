"""GPU smoke test of PolicyModule at scale: a few CW-DPO steps, peak GPU memory and step time per case.

Run by ``benchmarks/gpu_smoke.sh`` (one subprocess per case, so a failure or a leak cannot spoil the next case):

    python benchmarks/gpu_smoke.py --case zero3-14b       # Qwen2.5-14B-shaped, DeepSpeed ZeRO-3, LoRA, bf16
    python benchmarks/gpu_smoke.py --case plain-0.5b      # Qwen2.5-0.5B-shaped, one GPU, no DeepSpeed
    python benchmarks/gpu_smoke.py --list

Everything is built from a config (random init, no download, no internet): models are Qwen2-shaped with the
synthetic task's tokenizer (only its special-token ids are used) and random token batches (``--seq`` tokens per
row: half prompt, half response; ``--pairs`` pairs per step). Under ZeRO-3 the model is created inside
``configure_model``, i.e. under ``deepspeed.zero.Init``: parameters are born sharded on the GPU.

Prints one line per case, always (``status=failed`` with the exception when it breaks):

    RESULT zero3-14b status=ok peak_mem_gib=... step_s=... tokens_per_s=... build_s=... export_tensors=...
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `cwpo`

QWEN25_14B = {  # Qwen/Qwen2.5-14B's config.json, shapes only
    "model_type": "qwen2", "hidden_size": 5120, "num_hidden_layers": 48, "num_attention_heads": 40,
    "num_key_value_heads": 8, "intermediate_size": 13824, "vocab_size": 152064, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}  # fmt: skip
QWEN25_05B = {  # Qwen/Qwen2.5-0.5B's config.json, shapes only
    "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}  # fmt: skip

CASES = {
    # name: (model config, ZeRO-3?, gradient checkpointing, logps_impl, reference mode)
    "plain-0.5b": (QWEN25_05B, False, False, "logits", "adapter_disabled"),
    "zero3-14b": (QWEN25_14B, True, True, "hidden", "adapter_disabled"),
    "zero3-0.5b-precomputed": (QWEN25_05B, True, False, "hidden", "precomputed"),
    "plain-14b": (QWEN25_14B, False, True, "hidden", "adapter_disabled"),
}


def random_rows(n: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """Tokenised pair rows (docs/ARCHITECTURE.md): ``seq // 2`` prompt tokens, responses filling the rest."""
    import torch

    g = torch.Generator().manual_seed(seed)
    half = seq // 2

    def ids(length: int) -> list[int]:
        return torch.randint(10, vocab, (length,), generator=g).tolist()

    return [{"prompt_ids": ids(half), "chosen_ids": ids(seq - half), "rejected_ids": ids(seq - half - 8),
             "confidence": float(torch.rand(1, generator=g)), "index": i} for i in range(n)]  # fmt: skip


def run_case(name: str, args) -> dict:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from cwpo.data.collate import PairCollator
    from cwpo.models import LoraSpec, ModelSpec
    from cwpo.modules.causal_lm import check_adapter_file
    from cwpo.modules.optim import OptimConfig
    from cwpo.modules.policy import PolicyModule

    config, zero3, checkpointing, logps_impl, reference = CASES[name]
    cuda = torch.cuda.is_available()
    if args.dry_run:  # the same code path on a tiny model (CPU without CUDA): checks the script, not the GPU
        config = {**config, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512}  # fmt: skip
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = random_rows(args.pairs * args.steps, args.seq, config["vocab_size"])

    class RandomPairs(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(rows, batch_size=args.pairs, shuffle=False, collate_fn=PairCollator(pad_token_id=0))

    class Timer(L.Callback):
        def __init__(self):
            self.steps: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync()
            self.steps.append(time.perf_counter() - self.start)

    class TimedPolicy(PolicyModule):
        def configure_model(self):
            start = time.perf_counter()
            super().configure_model()
            sync()
            self.build_s = time.perf_counter() - start

    export = Path(tempfile.mkdtemp(prefix=f"gpu_smoke_{name}_")) / "adapter"
    spec = ModelSpec("synthetic", config=dict(config), from_scratch=True, dtype="bfloat16")
    module = TimedPolicy(spec, lora=LoraSpec(), optim=OptimConfig(lr=1e-4), beta=0.5, reference=reference,
                         logps_impl=logps_impl, gradient_checkpointing=checkpointing, export_dir=str(export),
                         reference_cache_dir=str(export.parent / "reference_cache"))  # fmt: skip
    if zero3:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy = DeepSpeedStrategy(stage=3, logging_batch_size_per_gpu=args.pairs)
    else:
        strategy = "auto"
    timer = Timer()
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, strategy=strategy, precision=args.precision,
                        max_steps=args.steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        default_root_dir=str(export.parent))  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, RandomPairs())
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    steady = timer.steps[1:] or timer.steps  # the first step pays for lazy initialisation
    step_s = statistics.median(steady)
    tokens = sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows[: args.pairs])
    tensors = check_adapter_file(export / "adapter_model.safetensors") if trainer.is_global_zero else -1
    return {
        "peak_mem_gib": f"{peak:.1f}",
        "step_s": f"{step_s:.3f}",
        "tokens_per_s": f"{tokens / step_s:.0f}",
        "first_step_s": f"{timer.steps[0]:.2f}",
        "build_s": f"{module.build_s:.1f}",
        "steps": len(timer.steps),
        "export_tensors": tensors,
        "params_b": f"{sum(getattr(p, 'ds_numel', p.numel()) for p in module.policy.parameters()) / 1e9:.2f}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: all")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per case")
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step (2 x pairs rows)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per row (prompt + response)")
    parser.add_argument("--precision", default="bf16-mixed", help="Lightning precision: bf16-mixed or bf16-true")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--dry-run", action="store_true", help="tiny model instead (checks the script on a CPU)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    import torch

    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA'}; torch "
          f"{torch.__version__}; steps={args.steps} pairs={args.pairs} seq={args.seq} precision={args.precision}",
          flush=True)  # fmt: skip
    failed = 0
    for name in args.case or list(CASES):
        start = time.perf_counter()
        try:
            result = run_case(name, args)
            fields = " ".join(f"{k}={v}" for k, v in result.items())
            print(f"RESULT {name} status=ok {fields} wall_s={time.perf_counter() - start:.0f}", flush=True)
        except Exception as error:  # a smoke test reports and goes on to the next case
            failed += 1
            traceback.print_exc()
            message = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
            print(f"RESULT {name} status=failed error={message!r} wall_s={time.perf_counter() - start:.0f}", flush=True)
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
