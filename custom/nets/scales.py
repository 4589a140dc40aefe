"""Learnable positive scales (temperatures), stored as clamped log-values."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class LogScale(nn.Module):
    """A positive scale ``exp(clamp(log_value, 0, ln max_value))``.

    Args:
        init: initial scale (e.g. 1/0.07 for the global logits).
        learnable: if False the value is a buffer (GLoRIA's fixed scales).
        max_value: upper clamp; the lower clamp is 1 (log 0), as CLIP-style training does.
    """

    def __init__(self, init: float, learnable: bool = True, max_value: float = 100.0) -> None:
        super().__init__()
        value = torch.tensor(math.log(float(init)), dtype=torch.float32)
        if learnable:
            self.log_value = nn.Parameter(value)
        else:
            self.register_buffer("log_value", value)
        self.max_log = math.log(float(max_value))

    def forward(self) -> torch.Tensor:
        return self.log_value.clamp(0.0, self.max_log).exp()

    def extra_repr(self) -> str:
        return f"value={float(self()):.4g}, learnable={isinstance(self.log_value, nn.Parameter)}"
