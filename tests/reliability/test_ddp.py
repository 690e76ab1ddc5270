"""Two-process DDP on CPU (gloo) trains like one process with the doubled batch; metrics reduce; rank 0 writes.

The two ranks run ``tests/reliability/ddp_fit.py`` (annotator, then policy) in subprocesses the test launches
itself with ``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_*`` set, as ``torchrun`` would (Lightning then spawns nothing;
DDP spawning inside pytest is fragile). The one-process runs of the same configs, with batch 8 instead of 4 per
rank, run in this process. The comparison is made honest:

- **Same pairs in each global step.** ``LengthGroupedSampler`` (length grouping on) builds its global batches of
  ``batch_size * world_size`` = 8 pairs the same way for one process and for two, and deals pair ``2j + r`` of each
  to rank ``r``, so the union of the two ranks' step-k batches is the one-process step-k batch. (Before issue #8
  Lightning wrapped the sampler in a ``DistributedSamplerWrapper`` that shuffled its positions: the grouping was
  lost under DDP and the order followed ``seed_everything``, not ``data.seed``.)
- **Same loss.** A DDP gradient is the mean over ranks of each rank's gradient. Each rank's loss is a batch mean
  (BT: ``mean``; policy: ``weighted_loss(reduction="mean")``, ``Σ c·ℓ / b``), and both ranks hold 4 pairs, so the
  mean of the two rank means is the one-process mean over 8 pairs, and so are the gradients. This holds only for
  ``reduction="mean"`` and equal per-rank batch sizes: with ``reduction="normalized"`` (``Σ c·ℓ / Σ c`` per rank)
  or SFT's per-token mean (tokens per rank differ) DDP optimises a different average than one process would,
  and a ragged last batch (not the case here: 40 pairs, 8 a step) gives its ranks different weights.
- **Tolerance.** The same maths summed in another order (padding to each rank's longest row instead of the
  batch's longest, an all-reduce of gradients instead of one batch), so equal up to float32 rounding: the per-step
  losses and the epoch metrics to ``rtol=1e-5, atol=1e-6`` over 10 Adam(W) steps (measured: within 1e-7); single
  weights to half a learning rate (see the test: Adam's sign-like first steps amplify rounding-level gradients).
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reliability.conftest import (
    REPO,
    ddp_fit_args,
    fit_in_process,
    last_checkpoint,
    load_checkpoint,
    read_steps,
    subprocess_env,
    write_ddp_data,
)

DDP_TIMEOUT_S = 480
LOSS_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Launch the two ranks now (they run while the one-process runs compute); wait when first asked."""
    base = tmp_path_factory.mktemp("ddp")
    root, data_dir = base / "root", base / "data"
    data_dir.mkdir()
    write_ddp_data(data_dir)
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        env = subprocess_env(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                             MASTER_PORT=port)  # fmt: skip
        log = open(base / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        processes.append((subprocess.Popen([sys.executable, str(REPO / "tests/reliability/ddp_fit.py"), str(root),
                                            str(data_dir)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                          log))  # fmt: skip
    state = {"done": False}

    def wait() -> tuple[Path, Path]:
        if not state["done"]:
            try:
                codes = [process.wait(timeout=DDP_TIMEOUT_S) for process, _ in processes]
            finally:
                for process, log in processes:
                    if process.poll() is None:
                        process.kill()
                    log.close()
            logs = "\n".join((base / f"rank{r}.log").read_text()[-3000:] for r in (0, 1))
            assert codes == [0, 0], logs
            state["done"] = True
        return root, data_dir

    yield data_dir, wait
    for process, log in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def _epoch_metrics(root: Path) -> dict[str, list[float]]:
    """Every epoch-level metric logged by ``CSVLogger`` (validation, and ``*_epoch`` training metrics)."""
    values: dict[str, list[float]] = {}
    with open(root / "logs" / "version_0" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and (key.startswith("val/") or key.endswith("_epoch")):
                    values.setdefault(key, []).append(float(value))
    return values


@pytest.mark.slow
@pytest.mark.parametrize("model", ["annotator", "policy"])
def test_two_process_ddp_matches_one_process_with_the_doubled_batch(model, ddp_runs, tmp_path):
    data_dir, wait = ddp_runs
    single_root = tmp_path / "single"
    single = fit_in_process(model, ddp_fit_args(model, single_root, data_dir, devices=1))
    root, _ = wait()

    single_steps = read_steps(data_dir / f"{model}-1-steps-rank0.jsonl")
    rank_steps = [read_steps(data_dir / f"{model}-2-steps-rank{rank}.jsonl") for rank in (0, 1)]
    assert len(single_steps) == len(rank_steps[0]) == len(rank_steps[1]) == 10  # 2 epochs of 40 pairs, 8 a step
    for one, r0, r1 in zip(single_steps, *rank_steps, strict=True):
        # the two ranks' batches are disjoint and together are the one-process batch
        assert not set(r0["rows"]) & set(r1["rows"]) and sorted(r0["rows"] + r1["rows"]) == sorted(one["rows"])
    single_loss = torch.tensor([r["loss"] for r in single_steps], dtype=torch.float64)
    ddp_loss = torch.tensor([(r0["loss"] + r1["loss"]) / 2 for r0, r1 in zip(*rank_steps, strict=True)],
                            dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(ddp_loss, single_loss, **LOSS_TOLERANCE)

    # The weights after 10 steps (rank 0's checkpoint is the run's; DDP keeps the ranks' weights identical).
    ddp_state = load_checkpoint(last_checkpoint(root / model))["state_dict"]
    single_state = {name: value.detach() for name, value in single.model.state_dict().items()}
    assert ddp_state.keys() == single_state.keys()
    # Adam's first steps move each weight by about ±lr·sign(g); where a gradient element is at rounding level its
    # sign is noise, so a single weight can differ by a fraction of the learning rate while the loss and the
    # validation metrics (below) agree to float32 rounding. Hence an element bound of half a step.
    atol = 0.5 * single.model.optim.lr
    for name, value in single_state.items():
        torch.testing.assert_close(ddp_state[name], value, rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")

    # Metrics reduce across the processes: rank 0's log of the epoch-level metrics (torchmetrics accuracy,
    # sync_dist means of val/loss and the reward metrics) equals the one-process values over all the pairs.
    ddp_metrics, single_metrics = _epoch_metrics(root / model), _epoch_metrics(single_root)
    assert ddp_metrics.keys() == single_metrics.keys() and "val/loss" in single_metrics
    assert any("accuracy" in key or "accuracies" in key for key in single_metrics)
    for key, values in single_metrics.items():
        torch.testing.assert_close(torch.tensor(ddp_metrics[key]), torch.tensor(values), **LOSS_TOLERANCE,
                                   msg=lambda m, k=key: f"{k}: {m}")  # fmt: skip


@pytest.mark.parametrize("n_rows", [40, 37])
def test_distributed_sampler_deals_out_the_one_process_batches(n_rows):
    """Fast, no processes: rank r's k-th batch is rows r, r + 2, ... of the one-process k-th batch of twice the
    size, lengths stay grouped, and a ragged end is padded so both ranks run the same number of batches."""
    from cwpo.data.sampler import LengthGroupedSampler

    lengths = [(i * 37) % 23 + 1 for i in range(n_rows)]
    one = list(LengthGroupedSampler(lengths, 8, seed=4, group_multiplier=2))
    ranks = [list(LengthGroupedSampler(lengths, 4, seed=4, group_multiplier=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == (n_rows + 1) // 2
    padded = one + one[: 2 * len(ranks[0]) - n_rows]
    for k in range(0, len(padded), 8):
        batch = padded[k : k + 8]
        assert ranks[0][k // 2 : k // 2 + 4] == batch[0::2] and ranks[1][k // 2 : k // 2 + 4] == batch[1::2]


@pytest.mark.slow
def test_only_rank_zero_writes_files(ddp_runs):
    """Rank 1 created, wrote, renamed and removed nothing under the run folder (its probe writes excepted, which
    show the audit hook was listening); the folder holds one copy of each artefact and no temporary file."""
    _, wait = ddp_runs
    root, data_dir = wait()
    writes = json.loads((data_dir / "rank1-writes.json").read_text())
    assert writes and all("probe-rank1" in entry for entry in writes), writes
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "probe-rank1" not in p.name)
    for model in ("annotator", "policy"):
        assert [f for f in files if f.startswith(f"{model}/logs")] == [
            f"{model}/logs/version_0/{name}"
            for name in ("checkpoints/last.ckpt", "config.yaml", "hparams.yaml", "metrics.csv")
        ]
    # The policy's reference log-probs: one cache file per table (train, val), written by rank 0 for both ranks.
    assert len([f for f in files if f.startswith("policy/reference_cache/")]) == 2
    assert not [f for f in files if f.endswith(".tmp") or "/." in f]
