"""Batch samplers: whole batches of indices, reproducible from (seed, epoch), split across ranks."""

from __future__ import annotations

import math

import numpy as np
import torch


class _RankAware:
    rank: int = 0
    world_size: int = 1

    def set_distributed(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size


class EpochBatchSampler(_RankAware, torch.utils.data.Sampler):
    """Shuffled (or ordered) batches whose order depends only on the seed and the epoch.

    Under DDP each rank takes an equal share of every epoch's permutation, padded by wrapping
    around, since ranks that ran different numbers of steps would hang in the gradient all-reduce.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def _per_rank(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self):
        order = self._order()
        if self.world_size > 1:
            total = self._per_rank() * self.world_size
            order = np.resize(order, total)[self.rank::self.world_size]
        stop = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        for i in range(0, stop, self.batch_size):
            yield order[i:i + self.batch_size]

    def __len__(self) -> int:
        m = self._per_rank()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)


class EvalBatchSampler(_RankAware, torch.utils.data.Sampler):
    """In-order batches; ranks take whole batches in turn, so every clip is scored exactly once.

    Rank r serves batches r, r + world_size, ...: the same batches, of the same clips, that one
    process serves, so a DDP evaluation computes bitwise the same scores as a single-process one
    (a clip's output can differ in the last bits with the other rows of its batch). A rank left
    without a batch (fewer batches than ranks) gets one empty batch: Lightning needs at least one
    batch on every rank, and every rank must join the epoch-end metric gather.
    """

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def _mine(self) -> range:
        return range(self.rank, math.ceil(self.n / self.batch_size), self.world_size)

    def __iter__(self):
        mine = self._mine()
        if not mine and self.world_size > 1:
            yield np.arange(0)
        for b in mine:
            yield np.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.n))

    def __len__(self) -> int:
        return max(len(self._mine()), int(self.world_size > 1))


class BalancedBatchSampler(EpochBatchSampler):
    """Class-balanced batches: draw a class uniformly, then a clip that has it (Kong et al. 2018)."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, drop_last: bool = False,
                 rows: np.ndarray | None = None):
        """`labels` (N, C) bool; with `rows`, the clips are labels[rows] (read in chunks, not copied)."""
        super().__init__(len(labels) if rows is None else len(rows), batch_size, True, seed, drop_last)
        if rows is None:
            clips, classes = np.nonzero(labels)
        else:
            step = 65536  # row-major like np.nonzero(labels[rows]): the same batches as from a copy
            pairs = [np.nonzero(labels[rows[i:i + step]]) for i in range(0, len(rows), step)]
            clips = np.concatenate([np.zeros(0, np.int64)] + [c + j * step for j, (c, _) in enumerate(pairs)])
            classes = np.concatenate([np.zeros(0, np.int64)] + [k for _, k in pairs])
        order = np.argsort(classes, kind="stable")
        self._members = clips[order]
        counts = np.bincount(classes, minlength=labels.shape[1])
        self._present = np.flatnonzero(counts)
        self._counts = counts[self._present]
        self._starts = np.concatenate([[0], np.cumsum(counts)])[self._present]

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        pick = rng.integers(0, len(self._present), size=self.n)
        offset = (rng.random(self.n) * self._counts[pick]).astype(np.int64)
        return self._members[self._starts[pick] + offset]


class StepBlocks(torch.utils.data.Sampler):
    """Groups every `steps` consecutive batches of a batch sampler into one block (a list of index arrays;
    an epoch's last block may hold fewer). The batches, their order and their epochs are the inner
    sampler's: a block only changes how many of them one loader fetch serves."""

    def __init__(self, batches, steps: int):
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        self.batches, self.steps = batches, steps

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def set_distributed(self, rank: int, world_size: int) -> None:
        self.batches.set_distributed(rank, world_size)

    def __iter__(self):
        block = []
        for batch in self.batches:
            block.append(batch)
            if len(block) == self.steps:
                yield block
                block = []
        if block:
            yield block

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.steps)

    def steps_in(self, blocks: int) -> int:
        """The batches (optimizer steps) an epoch's first `blocks` blocks hold."""
        return min(blocks * self.steps, len(self.batches))
