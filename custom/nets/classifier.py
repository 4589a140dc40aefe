"""An image classifier on the pretrained image tower: the network of the reclf_cls bundle (linear
probe, inference, MONAI Label)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..utils import as_optional_path
from .image_encoder import ImageEncoder


def refuse_path(pretrained_ckpt: Any, network: str, builder: str) -> None:
    """Networks take values, never paths: a checkpoint path here names the builder that loads it."""
    if as_optional_path(pretrained_ckpt) is not None:
        raise TypeError(
            f"{network} reads no checkpoint files (pretrained_ckpt={pretrained_ckpt!r}): use "
            f"_target_: custom.engines.checkpoints.{builder} (same arguments) to start from a pretraining checkpoint")

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


class ImageClassifier(nn.Module):
    """Pretrained ResNet image tower + a linear head on its pooled ``layer4`` features.

    Args:
        num_classes: C output logits (one per class; multi-label or multi-class alike).
        image_encoder: ``resnet18`` | ``resnet50`` ...
        pretrained_ckpt: accepted empty only (configs written before the layered package pass
            ``pretrained_ckpt: ""``); the network reads no files: initialise from a pretraining
            checkpoint with :func:`custom.engines.checkpoints.build_classifier`.
        freeze_encoder: keep the encoder fixed (linear probing): no gradients, eval-mode batch norm.

    Forward: images (B, 1, H, W) in [0, 1] → logits (B, C).
    """

    def __init__(self, num_classes: int, image_encoder: str = "resnet18", pretrained_ckpt: Any = None,
                 freeze_encoder: bool = True) -> None:
        super().__init__()
        refuse_path(pretrained_ckpt, "ImageClassifier", "build_classifier")
        name = str(image_encoder)
        if name not in FEATURE_DIMS:
            raise ValueError(f"image_encoder: expected one of {sorted(FEATURE_DIMS)}, got {name!r}")
        self.encoder_name = name
        self.encoder = ImageEncoder(name)
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
