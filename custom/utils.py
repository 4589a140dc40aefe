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


def as_int(value: Any, name: str, minimum: int | None = None) -> int:
    """Coerce a config/command-line value to int strictly: ``--epochs abc`` or ``--epochs 2.5`` is an
    error naming the key, and so is a value below ``minimum`` (``--epochs 0`` would train nothing)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueError
            number = int(number)
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {number}")
    return number


def as_float(value: Any, name: str, minimum: float | None = None) -> float:
    """Coerce to a finite float strictly (``--lr 1e-3x`` is an error naming the key)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name}: expected a number >= {minimum}, got {number}")
    return number


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
    """Write a text file atomically: an exclusively created temp file in the same folder (never a
    planted file or link), then a rename over ``path``; an interrupted write leaves the old file."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) as None, numpy scalars/arrays as
    Python values: undefined metrics are ``null`` in JSON, never NaN (DESIGN §5)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(value: Any, path: str, indent: int = 2) -> None:
    """The one writer of result/metrics JSON files: :func:`json_safe`, atomic."""
    import json

    atomic_write_text(json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n", path)


AMP_MODES = ("false", "true", "fp16", "bf16")


def as_amp(value: Any, name: str = "amp") -> str:
    """Coerce an ``amp`` config value to ``false`` | ``true`` | ``fp16`` | ``bf16``.

    ``true`` means the device's default (fp16 on CUDA, bf16 on CPU); the booleans and their
    command-line spellings (``--amp 0``, ``'false'``) are accepted as in :func:`as_bool`.
    """
    if isinstance(value, str) and value.strip().lower() in ("fp16", "float16", "half", "bf16", "bfloat16"):
        return "fp16" if value.strip().lower() in ("fp16", "float16", "half") else "bf16"
    try:
        return "true" if as_bool(value, name) else "false"
    except ValueError:
        raise ValueError(f"{name}: expected one of {list(AMP_MODES)}, got {value!r}") from None


def amp_dtype(amp: Any, device: torch.device | str, name: str = "amp") -> torch.dtype | None:
    """The autocast dtype of an ``amp`` value on ``device`` (None: full precision).

    fp16 on CPU is refused: CPU autocast in fp16 is slow and unscaled fp16 gradients underflow;
    bf16 has fp32's exponent range and needs no GradScaler.
    """
    mode = as_amp(amp, name)
    device_type = torch.device(device).type
    if mode == "false":
        return None
    if mode == "true":
        return torch.float16 if device_type == "cuda" else torch.bfloat16
    if mode == "fp16" and device_type != "cuda":
        raise ValueError(f"{name}: fp16 needs a CUDA device (device is {device_type!r}); use bf16 or true on CPU")
    return torch.float16 if mode == "fp16" else torch.bfloat16


def autocast(device: torch.device, enabled: Any):
    """Mixed precision for ``device`` from an ``amp`` value (bool or ``fp16`` / ``bf16``, see
    :func:`amp_dtype`): ``true`` is fp16 on CUDA (with a GradScaler in training), bf16 on CPU."""
    dtype = amp_dtype(enabled, device)
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)
