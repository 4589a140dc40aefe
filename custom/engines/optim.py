"""The optimizer (AdamW over per-part parameter groups) and the learning-rate schedules,
stepped per optimizer step: linear warm-up, then constant or cosine.

The factor functions are bound with ``functools.partial`` rather than stored on an object:
``LambdaLR.state_dict`` saves a callable object's ``__dict__`` and restores it on load, which
would carry an old run's horizon into a resumed run with more ``epochs``.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from ..nets.factory import unwrap

SCHEDULES = ("constant", "cosine")


def warmup_constant_factor(step: int, warmup_steps: int) -> float:
    """1 after a linear warm-up: the lr never depends on the planned number of epochs, so a run
    extended with ``--resume`` and more ``epochs`` equals one planned that long from the start."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.01) -> float:
    """Linear warm-up, then cosine from 1 to ``final_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.5,
    schedule: str = "constant",
    min_lr_ratio: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR: ``constant`` (after warm-up) or ``cosine`` over ``epochs`` down to
    ``min_lr_ratio`` × each group's lr.

    With ``cosine``, resuming with a larger ``epochs`` re-plans the remaining decay over the new
    horizon (exact only when ``epochs`` is unchanged).
    """
    schedule = str(schedule).strip().lower()
    warmup = max(1, int(round(float(warmup_epochs) * int(steps_per_epoch))))
    if schedule == "constant":
        factor = partial(warmup_constant_factor, warmup_steps=warmup)
    elif schedule == "cosine":
        ratio = float(min_lr_ratio)
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: expected a number in [0, 1], got {min_lr_ratio!r}")
        factor = partial(warmup_cosine_factor, warmup_steps=warmup, total_steps=int(epochs) * int(steps_per_epoch),
                         final_ratio=ratio)
    else:
        raise ValueError(f"lr_schedule: expected one of {list(SCHEDULES)}, got {schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- parameter groups ---------------------------------------------------------------------
PARTS = ("image", "text", "heads", "scales")
# ``auto`` learning rate of a tower that starts from pretrained weights. A from-scratch tower
# trains at ``lr`` with the heads; a pretrained one at these: 2e-5 is the usual BERT
# fine-tuning rate (Devlin et al. 2019 recommend 2e-5..5e-5; MGCA trains at 2e-5) and 1e-4 is
# ConVIRT's rate for its ImageNet ResNet-50. At the random-init rate (1e-3) a pretrained
# BERT tower collapsed every report onto one embedding within 4 steps (the measurement is in
# the pretraining model card).
PRETRAINED_LR = {"image": 1.0e-4, "text": 2.0e-5}


def parameter_part(name: str) -> str:
    """Which part a parameter of :class:`~custom.nets.reclf.RECLFModel` belongs to."""
    if name.endswith("log_value"):  # LogScale: temperatures / logit scales
        return "scales"
    if name.startswith("image_encoder."):
        return "image"
    if name.startswith("text_encoder."):
        return "text"
    return "heads"  # projections, position code, scorers, relation modules


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay on weight matrices / kernels / embeddings only: never on biases, norm
    weights (1-D) or scales (decay would pull a temperature towards 1 and a norm towards 0)."""
    return param.ndim >= 2 and not name.endswith("log_value")


def _auto(value: Any, default: float) -> float:
    return default if value is None or str(value).strip().lower() in ("auto", "") else float(value)


def resolve_part_settings(
    network: nn.Module,
    lr: float,
    weight_decay: float,
    image_lr: Any = "auto",
    text_lr: Any = "auto",
    scale_lr: Any = "auto",
    image_weight_decay: Any = "auto",
    text_weight_decay: Any = "auto",
) -> dict[str, dict[str, float]]:
    """Learning rate and weight decay of each part, ``auto`` resolved.

    ``auto`` learning rate of a tower: ``lr`` when it starts from random init, ``PRETRAINED_LR``
    when it starts from pretrained weights (``network.pretrained_parts``, set by the factory:
    ``image_weights``, ``text_encoder`` or ``init_ckpt``). ``auto`` scale lr: ``lr``; ``auto``
    tower weight decay: ``weight_decay``. Scales never decay.
    """
    pretrained = getattr(unwrap(network), "pretrained_parts", {})
    lr, weight_decay = float(lr), float(weight_decay)
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a number >= 0, got {value}")
    settings = {
        "image": {"lr": _auto(image_lr, PRETRAINED_LR["image"] if pretrained.get("image") else lr),
                  "weight_decay": _auto(image_weight_decay, weight_decay)},
        "text": {"lr": _auto(text_lr, PRETRAINED_LR["text"] if pretrained.get("text") else lr),
                 "weight_decay": _auto(text_weight_decay, weight_decay)},
        "heads": {"lr": lr, "weight_decay": weight_decay},
        "scales": {"lr": _auto(scale_lr, lr), "weight_decay": 0.0},
    }
    for part, values in settings.items():
        for key, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{part} {key}: expected a number >= 0, got {value}")
    return settings


def parameter_groups(network: nn.Module, settings: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per (part, decay / no decay), frozen parameters left out.

    Each group carries ``name`` (``"text/no_decay"``, ...) and ``param_names`` for logs and tests.
    """
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in unwrap(network).named_parameters():
        if not param.requires_grad:
            continue
        part, decay = parameter_part(name), decays(name, param)
        key = (part, decay)
        if key not in groups:
            groups[key] = {
                "name": f"{part}/{'decay' if decay else 'no_decay'}", "params": [], "param_names": [],
                "lr": settings[part]["lr"], "weight_decay": settings[part]["weight_decay"] if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    order = {(p, d): i for i, (p, d) in enumerate((p, d) for p in PARTS for d in (True, False))}
    return [groups[k] for k in sorted(groups, key=order.__getitem__)]


def build_optimizer(
    network: nn.Module,
    lr: float = 1.0e-3,
    weight_decay: float = 1.0e-4,
    image_lr: Any = "auto",
    text_lr: Any = "auto",
    scale_lr: Any = "auto",
    image_weight_decay: Any = "auto",
    text_weight_decay: Any = "auto",
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
    eps: float = 1.0e-8,
) -> torch.optim.AdamW:
    """AdamW with per-part learning rates and weight decay (see :func:`resolve_part_settings`).

    Logs one line per group (lr, decay, tensors, parameters) and the frozen parameter count, so
    a run's log says what was trained at which rate.
    """
    settings = resolve_part_settings(network, lr, weight_decay, image_lr, text_lr, scale_lr,
                                     image_weight_decay, text_weight_decay)
    groups = parameter_groups(network, settings)
    if not groups:
        raise ValueError("every parameter is frozen: nothing to train (check freeze_text_layers / freeze_image)")
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas: expected two numbers in [0, 1), got {betas}")
    log = logging.getLogger("reclf")
    net = unwrap(network)
    pretrained = getattr(net, "pretrained_parts", {})
    for group in groups:
        part = group["name"].split("/")[0]
        origin = {"image": " (pretrained)" if pretrained.get("image") else " (random init)",
                  "text": " (pretrained)" if pretrained.get("text") else " (random init)"}.get(part, "")
        log.info("optimizer group %-16s lr %.3g  weight_decay %.3g  %4d tensors %11d parameters%s",
                 group["name"], group["lr"], group["weight_decay"], len(group["params"]),
                 sum(p.numel() for p in group["params"]), origin)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    if frozen:
        log.info("frozen: %d parameters in %s", frozen, ", ".join(getattr(net, "frozen_modules", [])) or "?")
    return torch.optim.AdamW(groups, lr=float(lr), betas=betas, eps=float(eps))
