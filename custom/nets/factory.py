"""Plain-value helpers of the pretraining network: the :class:`RECLFModel` arguments a config or
``model.json`` may name, their coercion to what ``model.json`` records, and :func:`unwrap`.

Building the network from config values and from a checkpoint (both read files: torchvision
weights, a Hugging Face folder, ``model.pt``) is :mod:`custom.engines.pretrained`."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..utils import as_bool
from .reclf import RECLFModel

MODEL_ARGS = tuple(p for p in inspect.signature(RECLFModel.__init__).parameters if p not in ("self", "image_encoder", "text_encoder"))


# the model.json entries that rebuild the network (beside "model", the RECLFModel arguments)
BUILD_KEYS = ("image_encoder", "image_local_layer", "image_global_layer", "text_pooling", "text_readout", "text_readout_layers", "model")
_BOOL_ARGS = ("srm", "irm", "srm_word_bias", "learn_scales", "checkpoint_chunks")
_FLOAT_ARGS = ("srm_locality",)  # a command line gives '0.5': model.json records the number


def _plain(name: str, value: Any) -> Any:
    """A JSON-friendly, already-coerced value: ``model.json`` records what was built
    (``--srm false`` arrives as the string 'false'; it is stored as false)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if name in _BOOL_ARGS:
        return as_bool(value, name)
    if name in _FLOAT_ARGS:
        return float(value)
    return value


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP / DataParallel wrappers (state dicts without ``module.``)."""
    return getattr(model, "module", model)


