"""The shared optimiser and schedule: transformers' warm-up + decay, a warm-up in steps or as a share of the run,
never shortened behind the user's back."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cwpo.errors import ConfigError
from cwpo.modules.optim import OptimConfig, build_scheduler, configure_optimizers, warmup_steps


def rates(config: OptimConfig, total: int) -> list[float]:
    """The learning rate of each of ``total`` optimiser steps, as the optimiser sees it when it steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, total)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


# Peak 1, 2 warm-up steps of 6: the rate rises from 0 by 1/2 a step, then decays over the 4 steps left.
HAND = {
    "cosine": [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))],
    "linear": [0.0, 0.5, 1.0, 0.75, 0.5, 0.25],
    "constant": [0.0, 0.5, 1.0, 1.0, 1.0, 1.0],
}


@pytest.mark.parametrize("scheduler", sorted(HAND))
def test_schedules_match_hand_computed_rates(scheduler):
    assert rates(OptimConfig(lr=1.0, scheduler=scheduler, warmup_steps=2), 6) == pytest.approx(HAND[scheduler])


def test_a_warm_up_longer_than_a_tenth_of_the_run_is_kept_whole():
    # The earlier hand-written schedule cut this 10-step warm-up to 2 steps (a tenth of 20) without a word.
    seen = rates(OptimConfig(lr=1.0, scheduler="constant", warmup_steps=10), 20)
    assert seen[:11] == pytest.approx([k / 10 for k in range(11)])


def test_a_share_below_one_is_that_share_of_the_run_rounded_up():
    assert warmup_steps(OptimConfig(warmup_steps=0.1), 25) == 3
    assert warmup_steps(OptimConfig(warmup_steps=0.1), 300) == 30
    assert warmup_steps(OptimConfig(warmup_steps=7), 300) == 7
    assert warmup_steps(OptimConfig(warmup_steps=0), 300) == 0
    assert rates(OptimConfig(lr=1.0, scheduler="constant", warmup_steps=0.25), 8)[:3] == pytest.approx([0, 0.5, 1])


def test_a_warm_up_as_long_as_the_run_is_logged_once(caplog):
    with caplog.at_level("WARNING", logger="cwpo.modules.optim"):
        rates(OptimConfig(lr=1.0, warmup_steps=100), 12)
        rates(OptimConfig(lr=1.0, warmup_steps=11), 12)
    assert [r.getMessage()[:64] for r in caplog.records] == [
        "the warm-up (100 steps) lasts the whole run (12 optimiser steps)"
    ]


def test_an_unknown_run_length_keeps_the_peak_after_warm_up():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1.0, warmup_steps=2), 0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


@pytest.mark.parametrize("value", [-1, 1.5, 12.5])
def test_a_warm_up_that_is_neither_whole_steps_nor_a_share_is_refused(value):
    with pytest.raises(ConfigError, match="warmup_steps"):
        OptimConfig(warmup_steps=value)


class _Recorder(L.LightningModule):
    """One weight trained by cwpo's configure_optimizers; records the rate each step trains with."""

    def __init__(self, config: OptimConfig):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2, 2))
        self.config = config
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(self.optimizers().param_groups[0]["lr"])
        return (self.weight * batch[0].sum()).sum()

    def configure_optimizers(self):
        return configure_optimizers(self, self.config)


def test_the_trainer_gives_the_schedule_its_length_from_epochs_and_accumulation():
    config = OptimConfig(lr=1.0, scheduler="linear", warmup_steps=0.25)
    module = _Recorder(config)
    loader = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=1)  # 8 batches, 2 epochs, 2 per step: 8 steps
    trainer = L.Trainer(max_epochs=2, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, loader)
    steps = module.seen[::2]  # the rate of each optimiser step (two batches each)
    assert steps == pytest.approx(rates(config, 8))
    assert steps == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
