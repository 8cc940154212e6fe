"""Deterministic data order for training loops (pretraining, dense heads, fine-tuning).

Randomness is drawn from generators keyed by what it is for, e.g. (seed, epoch, sample index), so an
N-process run sees the same global batches as a 1-process run and a resumed run replays the exact
batches it missed, whatever the worker or rank layout.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def seeded(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1)[0]))


class GlobalBatchSampler(Sampler):
    """Yields this rank's share of each global batch, from ``start_step`` to ``total_steps``."""

    def __init__(self, n: int, batch_size: int, total_steps: int, start_step: int, seed: int, rank: int, world: int,
                 keep_prob: np.ndarray | None = None):
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        self.n, self.batch, self.total, self.start, self.seed = n, batch_size, total_steps, start_step, seed
        self.rank, self.world, self.keep_prob = rank, world, keep_prob

    def epoch_order(self, epoch: int) -> torch.Tensor:
        gen = seeded(self.seed, epoch, 1)
        order = torch.randperm(self.n, generator=gen)
        if self.keep_prob is not None:  # soft curation: a fresh keep/drop draw every epoch
            keep = torch.rand(self.n, generator=gen).numpy() < self.keep_prob[order.numpy()]
            order = order[torch.from_numpy(keep)]
        return order

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_order(epoch)) // self.batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, epoch = 0, 0
        while step < self.total:
            order = self.epoch_order(epoch)
            per_epoch = len(order) // self.batch
            if per_epoch == 0:
                raise ValueError(f"fewer images ({len(order)}) than one global batch ({self.batch})")
            for b in range(per_epoch):
                if step >= self.total:
                    return
                if step >= self.start:
                    batch = order[b * self.batch : (b + 1) * self.batch][self.rank :: self.world]
                    yield [(int(i), epoch) for i in batch]
                step += 1
            epoch += 1

    def __len__(self) -> int:
        return self.total - self.start
