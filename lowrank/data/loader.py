"""The training batches as a ``DataLoader``: patches sampled ahead of the steps in worker processes.

Item ``i`` of :class:`StepBatches` is the batch of step ``start + i``, i.e.
``PatchSampler.batch(start + i, ...)``, a pure function of ``(seed, step, rank)``. So what holds
is stronger than "deterministic per seed and worker": **the batches of a run are the same for
any number of workers (0 included), any prefetch depth and any resume point**; only which
process computes a batch changes. Worker processes also get their own torch / NumPy / ``random``
seeds, derived from the run's seed and the rank (``torch.initial_seed()`` in worker ``w`` is
``base + w``, the base drawn from a generator seeded by ``(seed, rank)``), so any code that
still reads a global RNG there is deterministic per seed and worker too; the training
process's global RNG is never read (the ``DataLoader`` gets its own generator).

On CUDA the loader pins its batches (page-locked memory) so that
``tensor.to(device, non_blocking=True)`` copies them asynchronously: the GPU never waits for
the sampler, which runs ``prefetch`` batches ahead in each worker.

Example:
    >>> from lowrank.data import PatchSampler, load_template, split_slab
    >>> from lowrank.data.loader import patch_loader
    >>> sampler = PatchSampler(split_slab(load_template())[0], (16, 16, 16), seed=0)
    >>> loader = patch_loader(sampler, start=0, steps=2, batch_size=1)
    >>> [tuple(x.shape) for x, _ in loader]
    [(1, 1, 16, 16, 16), (1, 1, 16, 16, 16)]
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .sampler import PatchSampler

__all__ = ["StepBatches", "patch_loader", "seed_worker"]


class StepBatches(Dataset):
    """The batches of steps ``start, …, steps - 1`` of one rank (item ``i``: step ``start + i``).

    Args:
        sampler: the patch sampler.
        start, steps: the first step and the end (exclusive).
        batch_size: patches per step and rank.
        rank, world_size: this process's share of the global batch.
    """

    def __init__(
        self,
        sampler: PatchSampler,
        *,
        start: int,
        steps: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.sampler = sampler
        self.start, self.steps = int(start), int(steps)
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``image (B, C, *patch)`` float32, ``label (B, 1, *patch)`` int64 of step ``start + index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"step {self.start + index} is outside [{self.start}, {self.steps})")
        return self.sampler.batch(
            self.start + index, self.batch_size, rank=self.rank, world_size=self.world_size
        )


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: NumPy and ``random`` seeded like torch in this worker; one thread."""
    seed = torch.initial_seed()  # the DataLoader's base seed + worker_id
    np.random.seed(seed % 2**32)
    random.seed(seed)
    torch.set_num_threads(1)  # the workers share the cores with the training process


def patch_loader(
    sampler: PatchSampler,
    *,
    start: int,
    steps: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
    prefetch: int = 2,
) -> DataLoader:
    """A ``DataLoader`` over :class:`StepBatches` (in step order, one batch per step).

    Args:
        sampler, start, steps, batch_size, rank, world_size: see :class:`StepBatches`.
        workers: worker processes (0: sample in the calling process, when the batch is asked).
        pin_memory: page-locked batches (for ``non_blocking`` copies to a GPU).
        prefetch: batches each worker prepares ahead.

    Raises:
        ValueError: ``workers < 0`` or ``prefetch < 1``.
    """
    if workers < 0 or prefetch < 1:
        raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
    batches = StepBatches(
        sampler, start=start, steps=steps, batch_size=batch_size, rank=rank, world_size=world_size
    )
    base = np.random.SeedSequence([sampler.seed, int(rank), 11]).generate_state(1, np.uint64)[0] >> 1
    return DataLoader(
        batches,
        batch_size=None,  # an item is already a batch
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker if workers else None,
        generator=torch.Generator().manual_seed(int(base)),
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
    )
