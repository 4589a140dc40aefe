"""Learning-rate schedule: linear warm-up then cosine decay, stepped per iteration."""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """lr factor for step s: linear 0→1 over ``warmup_steps``, then cosine 1→``final_ratio``."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, final_ratio: float = 0.01) -> None:
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.final_ratio = float(final_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.5
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over ``epochs * steps_per_epoch`` iterations (its state dict resumes exactly)."""
    total = int(epochs) * int(steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total, int(round(float(warmup_epochs) * int(steps_per_epoch))))
    )
