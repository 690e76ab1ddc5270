"""A length-grouped sampler: batches of similar length (less padding), shuffled, deterministic under a seed."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from cwpo.errors import ConfigError


class LengthGroupedSampler(DistributedSampler):
    """Yield indices so that consecutive ``batch_size`` chunks hold rows of similar length.

    Each epoch: a seeded permutation of all rows is cut into groups of ``batch_size * group_multiplier``;
    each group is sorted by length (longest first) and cut into batches; the full batches are shuffled (a
    partial last batch stays last, so a ``DataLoader`` with the same ``batch_size`` cuts exactly these
    batches). The permutation depends only on ``seed`` and the epoch (:meth:`set_epoch`, which Lightning calls
    every epoch), so runs are repeatable on any machine (NumPy's PCG64 stream).

    Distributed (``num_replicas > 1``): the order above is built for the *global* batch ``batch_size *
    num_replicas`` (so global batch k holds the same rows as batch k of one process with that batch size), padded
    with its first rows to a multiple of ``num_replicas`` as ``DistributedSampler`` pads (every rank then runs the
    same number of steps), and rank ``r`` yields rows ``r, r + num_replicas, ...`` of each global batch: a rank's
    batch is a length-sorted slice of the global one. It is a ``DistributedSampler`` so that Lightning uses it as it
    is: Lightning wraps any other training sampler in a ``DistributedSamplerWrapper`` that shuffles its positions,
    which would undo the grouping and make the order depend on ``seed_everything`` instead of ``seed``.

    Args:
        lengths: the padded length each row will need (e.g. prompt + longer response).
        batch_size: the ``DataLoader``'s batch size (per process).
        seed: base seed of the permutation.
        group_multiplier: batches per sorted group: larger groups cut more padding but mix lengths less.
        group_by_length: ``False`` gives a plain seeded shuffle (same interface).
        num_replicas: number of processes sharing each global batch (the trainer's world size).
        rank: this process's rank, ``0 <= rank < num_replicas``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        group_multiplier: int = 50,
        group_by_length: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        # Not DistributedSampler.__init__, which needs an initialised process group: the attributes its readers
        # use are set here.
        if batch_size < 1 or group_multiplier < 1:
            raise ConfigError(f"batch_size and group_multiplier must be >= 1, got {batch_size}, {group_multiplier}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.group_multiplier = group_multiplier
        self.group_by_length = group_by_length
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = True
        self.drop_last = False
        self.num_samples = math.ceil(len(self.lengths) / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def _global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (``batch_size * num_replicas`` rows, the last one possibly fewer)."""
        batch_size = self.batch_size * self.num_replicas
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if not self.group_by_length:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        group = batch_size * self.group_multiplier
        batches = []
        for start in range(0, len(order), group):
            members = order[start : start + group]
            # stable sort, longest first: equal lengths keep the permutation's (seeded) order
            members = members[np.argsort(-self.lengths[members], kind="stable")]
            batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
        last = batches.pop() if batches and len(batches[-1]) < batch_size else None
        shuffled = [batches[i] for i in rng.permutation(len(batches))]
        if last is not None:
            shuffled.append(last)
        return shuffled

    def __iter__(self) -> Iterator[int]:
        batches = self._global_batches()
        if self.num_replicas == 1:
            return iter(np.concatenate(batches).tolist() if batches else [])
        order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        padding = self.total_size - len(order)
        if padding:  # repeat the first rows, as DistributedSampler does; only the last global batch grows
            order = np.concatenate([order, np.resize(order, padding)])
            batches = [*batches[:-1], order[len(order) - len(batches[-1]) - padding :]]
        return iter(np.concatenate([batch[self.rank :: self.num_replicas] for batch in batches]).tolist())


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` that Lightning can stop and resume in the middle of an epoch.

    Lightning's fit loop saves ``state_dict()`` of a loader that has one (its ``_Stateful`` protocol) in every
    checkpoint and hands it back through ``load_state_dict()`` on resume. A plain ``DataLoader`` has none, so a run
    resumed from a mid-epoch checkpoint starts that epoch's batch order again from its first batch: it trains on
    the first ``k`` batches twice and never on the last ``k``.

    The state is ``{"epoch", "batches"}``: the sampler's epoch and how many batches this loader has handed out in
    it. On resume, the same epoch's pass skips that many batches; a saved position of another epoch (one that was
    finished) is ignored. Skipped batches are drawn and dropped (their rows are read and collated, about a
    millisecond a batch), which keeps the skip right for any sampler and with worker processes; under DDP the
    count is per rank, which is what each rank skips. (Lightning's own restore of this state is skipped when
    ``configure_optimizers`` reads ``estimated_stepping_batches``; ``cwpo.modules.resume.ResumeState`` restores it.)

    Why not torchdata's ``StatefulDataLoader`` (0.11): put in this loader's place, it failed all three
    kill-and-resume tests (``tests/reliability/test_resume.py``): the resumed runs trained other rows than the
    uninterrupted ones at an epoch's end and mid-epoch 1, and stopped 6 steps short mid-epoch 0. Its state holds
    how many batches it handed out but not in which epoch, so a saved position cannot be told from a finished
    epoch's, which the ``epoch`` here does.
    """

    _resume: tuple[int, int] | None = None
    _position: int = 0

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __iter__(self) -> Iterator:
        # A generator: its body runs at the first ``next``, after Lightning's ``set_epoch`` for this epoch.
        start = 0
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == self._epoch():
                start = batches
        self._position = 0
        for batch in super().__iter__():
            self._position += 1  # counted before the step runs: a checkpoint at its end has consumed it
            if self._position > start:
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": self._position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))
