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


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces the gradient and keeps this rank's slice.

    Rank r's features then receive Σ_r' ∂L_r'/∂f_r: the gradient of *every* rank's loss, not
    only its own. With each rank's loss the mean over its own rows and DDP averaging gradients
    over ranks, the update equals the single-process gradient of the full-batch loss. Keeping
    only the local slice's graph (other slices as constants, open_clip's default) would drop
    the terms in which another rank's rows score this rank's features.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # a reduce-scatter, written as all-reduce + slice (gloo has no reduce_scatter)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 (B, ...) -> (world_size · B, ...), rank order, gradients exact.

    Floating tensors go through :class:`_GatherWithGrad` (the backward sums every rank's
    gradient w.r.t. this rank's slice); integer tensors (report keys) are gathered plainly.
    Every rank must pass the same shape. Identity in a single process.
    """
    if not is_distributed():
        return tensor
    if tensor.is_floating_point() and tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
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
