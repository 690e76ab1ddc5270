"""Torch threads and precision per model size: wall time of one training step at 1 and 2 threads, fp32 and bf16.

    .venv/bin/python benchmarks/threads.py            # the three shapes below, both precisions, 1 and 2 threads

Each shape is a Llama built from its config with random weights (the time of a step does not depend on the values):
the embedded default's strong model (64 wide, 3 layers), a MiniLM-sized one (384 wide, 6 layers) and SmolLM2-135M's
shape (576 wide, 30 layers). A step is a forward and backward of the causal-LM loss over ``--batch`` rows of
``--length`` tokens, LoRA-style (only the q/v projections get gradients), under bf16 autocast for bf16. Each
setting runs ``--steps`` timed steps after two warm-up steps; settings alternate so machine load moves all alike.
Reported: median ms per step (wall) and the CPU seconds it used, and the best thread count per shape and precision.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

SHAPES = {
    "tiny (embedded default)": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3, "heads": 4,
                                "vocab_size": 300, "batch": 32, "length": 48},
    "MiniLM-sized": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "heads": 12,
                     "vocab_size": 30522, "batch": 8, "length": 256},
    "SmolLM2-135M": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "heads": 9,
                     "vocab_size": 49152, "batch": 8, "length": 256},
}  # fmt: skip


def build(shape: dict):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for name, param in model.named_parameters():
        param.requires_grad_(any(key in name for key in ("q_proj", "v_proj")))
    ids = torch.randint(0, shape["vocab_size"], (shape["batch"], shape["length"]))
    return model, ids


def step(model, ids, precision: str) -> None:
    import torch

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args(argv)
    import torch

    lines = [f"{'shape':<26} {'precision':<9} {'threads':>7} {'ms/step':>9} {'CPU-s/step':>10}"]
    best: dict[tuple[str, str], tuple[float, int]] = {}
    for name in args.shapes:
        shape = SHAPES[name]
        model, ids = build(shape)
        times: dict[tuple[str, int], list[tuple[float, float]]] = {}
        settings = [(p, t) for p in args.precision for t in args.threads]
        for setting in settings:  # warm-up, oneDNN kernel choice per thread count and dtype
            torch.set_num_threads(setting[1])
            step(model, ids, setting[0])
            step(model, ids, setting[0])
        for _ in range(args.steps):
            for precision, threads in settings:
                torch.set_num_threads(threads)
                wall, cpu = time.perf_counter(), time.process_time()
                step(model, ids, precision)
                times.setdefault((precision, threads), []).append(
                    (time.perf_counter() - wall, time.process_time() - cpu)
                )
        for (precision, threads), samples in times.items():
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            lines.append(f"{name:<26} {precision:<9} {threads:>7} {1000 * wall:>9.1f} {cpu:>10.3f}")
            key = (name, precision)
            if key not in best or wall < best[key][0]:
                best[key] = (wall, threads)
        print("\n".join(lines[-len(settings) :]), flush=True)
    lines.append("")
    for (name, precision), (wall, threads) in best.items():
        line = f"best for {name}, {precision}: {threads} thread(s), {1000 * wall:.1f} ms/step"
        if precision == "bf16" and (name, "fp32") in best:
            line += f"; bf16 at its best is {best[(name, 'fp32')][0] / wall:.2f}x fp32 at its best"
        lines.append(line)
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
