"""Freezing parts of the pretraining towers: text embeddings + the first N layers, image stages.

A frozen part is a fixed function: its parameters stop receiving gradient (and are left out of
the optimizer, so weight decay cannot move them either), and it stays in eval mode, so batch
norm statistics and dropout masks cannot change it. :class:`~custom.nets.reclf.RECLFModel`
keeps the frozen module names and re-applies eval mode after every ``train()``.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

IMAGE_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def text_layer_count(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "num_hidden_layers", 0))


def parse_text_freeze(value: Any, num_layers: int) -> int:
    """``freeze_text_layers``: 0 / none (train everything), N (embeddings + layers 0..N-1), all."""
    text = str(value).strip().lower()
    if text in ("all", "true"):
        return num_layers + 1  # embeddings, every layer: the whole tower
    if text in ("", "none", "false", "0"):
        return 0
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"freeze_text_layers: expected 0..{num_layers} or 'all', got {value!r}") from None
    if not 0 <= n <= num_layers:
        raise ValueError(f"freeze_text_layers: the text tower has {num_layers} layers; got {n} (use 0..{num_layers} or 'all')")
    return n


def text_modules_to_freeze(text_encoder: nn.Module, value: Any) -> list[str]:
    """Names (relative to the text encoder wrapper) of the modules ``freeze_text_layers`` freezes."""
    model = text_encoder.model
    num_layers = text_layer_count(model)
    n = parse_text_freeze(value, num_layers)
    if n == 0:
        return []
    if n > num_layers:
        return ["model"]
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not hasattr(model, "embeddings") or layers is None:
        raise ValueError(
            f"freeze_text_layers: the text tower ({type(model).__name__}) has no BERT-style embeddings / "
            "encoder.layer modules; use 0 or 'all'"
        )
    return ["model.embeddings"] + [f"model.encoder.layer.{i}" for i in range(n)]


def image_modules_to_freeze(value: Any) -> list[str]:
    """``freeze_image``: none | stem | layer1..layer4 (that stage and every one before it) | all."""
    text = str(value).strip().lower()
    if text in ("", "none", "false"):
        return []
    if text in ("all", "true"):
        return ["backbone"]
    if text not in IMAGE_STAGES:
        raise ValueError(f"freeze_image: expected none, {', '.join(IMAGE_STAGES)} or all, got {value!r}")
    names = ["backbone.conv1", "backbone.bn1"]
    for stage in IMAGE_STAGES[1 : IMAGE_STAGES.index(text) + 1]:
        names.append(f"backbone.{stage}")
    return names


def freeze_parts(model: nn.Module, text_layers: Any = 0, image: Any = "none") -> list[str]:
    """Freeze parts of a :class:`~custom.nets.reclf.RECLFModel` in place; returns the frozen
    module names (also stored on the model as ``frozen_modules``)."""
    names = [f"text_encoder.{n}" for n in text_modules_to_freeze(model.text_encoder, text_layers)]
    names += [f"image_encoder.{n}" for n in image_modules_to_freeze(image)]
    for name in names:
        module = model.get_submodule(name)
        for param in module.parameters():
            param.requires_grad_(False)
        module.eval()
    model.frozen_modules = names
    return names
