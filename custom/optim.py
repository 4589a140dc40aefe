"""Learning-rate schedules, stepped per iteration: linear warm-up, then constant or cosine.

The factor functions are bound with ``functools.partial`` rather than stored on an object:
``LambdaLR.state_dict`` saves a callable object's ``__dict__`` and restores it on load, which
would carry an old run's horizon into a resumed run with more ``epochs``.
"""

from __future__ import annotations

import math
from functools import partial

import torch

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
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR: ``constant`` (after warm-up) or ``cosine`` over ``epochs``.

    With ``cosine``, resuming with a larger ``epochs`` re-plans the remaining decay over the new
    horizon (exact only when ``epochs`` is unchanged).
    """
    schedule = str(schedule).strip().lower()
    warmup = max(1, int(round(float(warmup_epochs) * int(steps_per_epoch))))
    if schedule == "constant":
        factor = partial(warmup_constant_factor, warmup_steps=warmup)
    elif schedule == "cosine":
        factor = partial(warmup_cosine_factor, warmup_steps=warmup, total_steps=int(epochs) * int(steps_per_epoch))
    else:
        raise ValueError(f"lr_schedule: expected one of {list(SCHEDULES)}, got {schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
