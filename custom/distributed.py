"""torch.distributed helpers (all no-ops in a single process)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0; this rank's slice keeps its autograd graph (open_clip-style).

    Other ranks' slices are constants here: each rank back-propagates through its own features,
    and DDP averages the resulting gradients.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank()] = tensor
    return torch.cat(parts, dim=0)


def init_process_group() -> torch.device:
    """Initialise the default group for ``torchrun``: NCCL on GPU, gloo on CPU. Returns the device."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        if not is_distributed():
            dist.init_process_group(backend="nccl")
        return torch.device(f"cuda:{local_rank}")
    if not is_distributed():
        dist.init_process_group(backend="gloo")
    return torch.device("cpu")


def destroy_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()
