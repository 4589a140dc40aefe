"""DataLoaders: worker counts (``auto``) and the pretraining loader (seeded order, DDP shards)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from ..utils import as_int

if TYPE_CHECKING:
    from .datasets import PretrainDataset

logger = logging.getLogger("reclf")


def resolve_workers(num_workers: Any, processes: int | None = None) -> int:
    """``num_workers``: an int >= 0, or ``auto`` = min(4, cores / processes - 1), 0 on one core.

    Workers overlap reading and augmenting the next batches with the training step; one core is
    left to the main process (which runs the model), and the ``processes`` on this machine share
    the cores (default: torchrun's ``LOCAL_WORLD_SIZE``, else 1). Measured on 2 busy cores
    (benchmarks/pipeline.py): augmentation in the main process runs ~10x slower than in a worker,
    because torch's intra-op threads fight over the cores for small ops, while workers run one
    thread each. Beyond ~4 a worker rarely adds throughput for 224-512 px uint8
    cache reads, while each one costs memory and start-up time.
    """
    if isinstance(num_workers, str) and num_workers.strip().lower() == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        return max(0, min(4, cores // max(1, int(processes)) - 1))
    return as_int(num_workers, "num_workers", minimum=0)


def make_loader(
    dataset: PretrainDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    grad_accumulation: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on (seed, epoch): a DistributedSampler, one replica
    unless ``distributed``; ``num_workers`` may be ``auto`` (:func:`resolve_workers`). The trainer
    calls ``set_epoch`` on the sampler and the dataset.

    A loader batch holds ``batch_size × grad_accumulation`` items: the trainer splits it into
    ``grad_accumulation`` micro-batches of one contrastive batch."""
    from monai.data import DataLoader

    from ..distributed import rank, world_size

    batch_size = as_int(batch_size, "batch_size", minimum=1) * as_int(grad_accumulation, "grad_accumulation", minimum=1)
    replicas, me = (world_size(), rank()) if distributed else (1, 0)
    num_workers = resolve_workers(num_workers)
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=replicas, rank=me, shuffle=shuffle, seed=int(seed), drop_last=drop_last
    )
    loader = DataLoader(
        dataset, batch_size=int(batch_size), sampler=sampler, num_workers=int(num_workers),
        collate_fn=dataset.collate, drop_last=drop_last,
        # a private generator: worker seeding must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(int(seed)),
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(dataset)} items make no full batch of batch_size={batch_size} per process: lower batch_size"
        )
    return loader
