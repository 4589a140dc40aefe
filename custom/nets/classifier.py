"""An image classifier on the pretrained image tower: the network of the reclf_cls bundle (linear
probe, inference, MONAI Label)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from ..utils import as_optional_path
from .image_encoder import ImageEncoder

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


def pretrained_image_encoder_name(ckpt: str) -> str:
    """The image encoder a self-describing pretraining checkpoint was built with (its ``model.json``)."""
    meta = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "model.json")
    if not os.path.isfile(meta):
        raise FileNotFoundError(f"{meta!r} not found: {ckpt!r} is not a self-describing reclf checkpoint")
    with open(meta, encoding="utf-8") as f:
        return json.load(f)["image_encoder"]


def load_image_tower(encoder: ImageEncoder, ckpt: str) -> None:
    """Copy the ``image_encoder.*`` weights of a pretraining ``model.pt`` into ``encoder`` (strict)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    tower = {k.removeprefix("module.")[len(prefix):]: v for k, v in state.items()
             if k.removeprefix("module.").startswith(prefix)}
    if not tower:
        raise ValueError(f"{ckpt!r} holds no '{prefix}*' weights: not a reclf pretraining checkpoint")
    try:
        encoder.load_state_dict(tower, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{ckpt!r}: its image tower does not match {type(encoder).__name__}: {err}") from err


class ImageClassifier(nn.Module):
    """Pretrained ResNet image tower + a linear head on its pooled ``layer4`` features.

    Args:
        num_classes: C output logits (one per class; multi-label or multi-class alike).
        image_encoder: ``resnet18`` | ``resnet50`` ... (ignored when ``pretrained_ckpt`` is given:
            the checkpoint's own encoder is used).
        pretrained_ckpt: a ``reclf_pretrain`` ``model.pt`` whose image tower initialises the
            encoder; ``""`` = random init (the baseline).
        freeze_encoder: keep the encoder fixed (linear probing): no gradients, eval-mode batch norm.

    Forward: images (B, 1, H, W) in [0, 1] → logits (B, C).
    """

    def __init__(self, num_classes: int, image_encoder: str = "resnet18", pretrained_ckpt: Any = "",
                 freeze_encoder: bool = True) -> None:
        super().__init__()
        ckpt = as_optional_path(pretrained_ckpt)
        name = pretrained_image_encoder_name(ckpt) if ckpt else str(image_encoder)
        if name not in FEATURE_DIMS:
            raise ValueError(f"image_encoder: expected one of {sorted(FEATURE_DIMS)}, got {name!r}")
        self.encoder_name = name
        self.encoder = ImageEncoder(name)
        if ckpt:
            load_image_tower(self.encoder, ckpt)
        self.head = nn.Linear(FEATURE_DIMS[name], int(num_classes))
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen: batch-norm statistics stay those of pretraining
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) → pooled encoder features (B, F)."""
        return self.encoder(images)["global"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
