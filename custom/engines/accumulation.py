"""Gradient accumulation that keeps a contrastive batch whole (GradCache-style feature caching).

Summing the losses of micro-batches would shrink the set of negatives to one micro-batch: a
batch of 64 accumulated as 4 × 16 would train like batch 16. Here an effective batch is split
into micro-batches that are encoded without a graph; the loss is computed once over the cached
features of the whole batch (every pair meets every other, globally and locally); then each
micro-batch is encoded again with a graph and the loss gradient w.r.t. its features is
back-propagated through it. The gradient equals the full batch's (up to batch-norm statistics,
which are per micro-batch), at the cost of one more forward pass of the encoders.

Dropout draws the same masks in both passes (the RNG state is replayed), and batch-norm running
statistics are updated once per micro-batch, as an un-accumulated micro-batch would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..distributed import is_distributed, world_size
from ..nets.factory import unwrap
from ..utils import autocast

MODEL_INPUTS = ("image", "input_ids", "attention_mask", "word_ids")
_PAD = {"words": 0.0, "word_mask": False}  # per-micro-batch word axes differ: pad to the longest


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-micro-batch feature dicts along the batch axis (word axis padded)."""
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        if not isinstance(first, torch.Tensor) or key == "positions":
            out[key] = first  # grid_size; positions are recomputed from parameters by contrast()
            continue
        values = [p[key] for p in parts]
        if key in _PAD:
            width = max(v.shape[1] for v in values)
            values = [_pad_words(v, width, _PAD[key]) for v in values]
        out[key] = torch.cat(values, dim=0)
    out.pop("positions", None)
    return out


def _pad_words(value: torch.Tensor, width: int, fill: float | bool) -> torch.Tensor:
    """(B, T, ...) -> (B, width, ...) with ``fill`` after T."""
    if value.shape[1] == width:
        return value
    out = value.new_full((value.shape[0], width, *value.shape[2:]), fill)
    out[:, : value.shape[1]] = value
    return out


def all_reduce_gradients(module: nn.Module) -> None:
    """Average gradients over ranks (what DDP does in backward; the cached path runs the bare
    module, outside DDP's hooks). One flattened all-reduce per dtype."""
    if not is_distributed():
        return
    import torch.distributed as dist

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def accumulated_backward(
    network: nn.Module,
    batch: dict[str, torch.Tensor],
    micro_batch_size: int,
    loss_function: Callable[[dict, torch.Tensor], dict[str, torch.Tensor]],
    device: torch.device,
    amp: bool = False,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
    check_loss: Callable[[torch.Tensor], None] = lambda loss: None,
) -> dict[str, torch.Tensor]:
    """Back-propagate the loss of the whole ``batch`` in micro-batches of ``micro_batch_size``.

    Args:
        network: a :class:`~custom.nets.reclf.RECLFModel` (DDP-wrapped or not; the bare module
            is run and gradients are all-reduced here when distributed).
        batch: the effective batch on ``device`` (B = k · micro_batch_size pairs).
        loss_function: :class:`~custom.losses.PretrainLoss`. scale_loss: the GradScaler's ``scale``.
        check_loss: called with the loss before any backward (raises on a non-finite loss).

    Returns the loss dict of the whole batch (``loss`` with its graph released).
    """
    net = unwrap(network)
    size = batch["image"].shape[0]
    micro = [slice(s, min(s + int(micro_batch_size), size)) for s in range(0, size, int(micro_batch_size))]
    inputs = [[batch[k][sl] for k in MODEL_INPUTS] for sl in micro]
    buffers = {name: buf.detach().clone() for name, buf in net.named_buffers()}
    states, parts = [], []
    with torch.no_grad():
        for args in inputs:
            states.append(_rng_state(device))
            with autocast(device, amp):
                parts.append(net.encode(*args))
    with torch.no_grad():  # the second pass updates the running statistics, once
        for name, buf in net.named_buffers():
            buf.copy_(buffers[name])
    cached = _concat(parts)
    leaves = {k: v.detach().requires_grad_(True) for k, v in cached.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    with autocast(device, amp):
        outputs = net.contrast({**cached, **leaves}, batch["report_id"])
    losses = loss_function(outputs, batch["report_id"])
    check_loss(losses["loss"])
    scale_loss(losses["loss"]).backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    for n, (sl, args) in enumerate(zip(micro, inputs)):
        _set_rng_state(states[n], device)
        with autocast(device, amp):
            feats = net.encode(*args)
        tensors, feature_grads = [], []
        for key, grad in grads.items():
            value = feats[key]
            part = grad[sl]
            if key in _PAD:
                part = part[:, : value.shape[1]]
            tensors.append(value)
            feature_grads.append(part.to(value.dtype))
        torch.autograd.backward(tensors, feature_grads)
    all_reduce_gradients(net)
    return {k: v.detach() for k, v in losses.items()}
