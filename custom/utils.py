"""Small helpers shared by the components: strict config coercion and seeding."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

_TRUE = {"true", "1", "yes", "on", "y", "t"}
_FALSE = {"false", "0", "no", "off", "n", "f", ""}


def as_bool(value: Any, name: str = "value") -> bool:
    """Coerce a config/command-line value to bool strictly.

    ``monai.bundle run`` hands ``--srm false`` over as the *string* ``'false'``, which Python
    treats as truthy; every boolean switch goes through here so that it means what it says.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name}: expected true/false (or 1/0), got {value!r}")


def as_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    """Return ``value`` as a lower-case string if it is one of ``choices``, else raise."""
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return text


def as_optional_path(value: Any) -> str | None:
    """Empty string / None / 'none' mean "no path" (a command line cannot pass None)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in ("", "none", "null") else text


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch RNGs (called from a workflow, never at import)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed that depends only on (run seed, epoch), so that a resumed run replays exactly."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31 - 1)


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous file intact: ``os.replace`` is atomic on POSIX.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str) -> None:
    """Write a text file atomically (temporary file + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision for ``device``: fp16 on CUDA (with a GradScaler in training), bf16 on CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)
