"""Data order as a pure function of (seed, step), so training resumes mid-epoch exactly.

:class:`StepBatchSampler` yields, for every step from ``start_step`` on, the batch of dataset
indices that step uses on this process; each index travels with its epoch so that
:class:`EpochIndexed` can tell the dataset which epoch's augmentation to draw (the datasets seed
each sample's augmentation from (seed, epoch, index), whichever worker loads it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for steps ``start_step .. total_steps - 1``.

    Each epoch is a permutation of the dataset drawn from ``seed + epoch``; the permutation is
    split into ``world_size`` interleaved shards and each shard into batches of ``batch_size``
    (incomplete batches are dropped, so every step has the same batch shape).
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        total_steps: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        per_step = batch_size * world_size
        if dataset_size < per_step:
            raise ValueError(
                f"the training split has {dataset_size} samples, fewer than one step needs "
                f"(batch size {batch_size} x {world_size} processes)"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = dataset_size // per_step

    def epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=gen)

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        per_step = self.batch_size * self.world_size
        chunk = order[pos * per_step : (pos + 1) * per_step]
        mine = chunk[self.rank :: self.world_size]
        return [(epoch, int(i)) for i in mine]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cached_epoch, order = -1, None
        per_step = self.batch_size * self.world_size
        for step in range(self.start_step, self.total_steps):
            epoch, pos = divmod(step, self.steps_per_epoch)
            if order is None or epoch != cached_epoch:
                cached_epoch, order = epoch, self.epoch_order(epoch)
            chunk = order[pos * per_step : (pos + 1) * per_step]
            yield [(epoch, int(i)) for i in chunk[self.rank :: self.world_size]]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class EpochIndexed(Dataset):
    """Wraps a dataset with ``set_epoch`` so it can be indexed by ``(epoch, index)``."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
