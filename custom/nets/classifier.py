"""An image classifier on the pretrained image tower: the network of the reclf_cls bundle (linear
probe, inference, MONAI Label)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..utils import as_optional_path
from .image_encoder import ImageEncoder, check_stage, stage_channels


def refuse_path(pretrained_ckpt: Any, network: str, builder: str) -> None:
    """Networks take values, never paths: a checkpoint path here names the builder that loads it."""
    if as_optional_path(pretrained_ckpt) is not None:
        raise TypeError(
            f"{network} reads no checkpoint files (pretrained_ckpt={pretrained_ckpt!r}): use "
            f"_target_: custom.engines.checkpoints.{builder} (same arguments) to start from a pretraining checkpoint")


class ImageClassifier(nn.Module):
    """Pretrained ResNet image tower + a linear head on its pooled ``encoder_depth`` features.

    Args:
        num_classes: C output logits (one per class; multi-label or multi-class alike).
        image_encoder: ``resnet18`` | ``resnet50`` ...
        pretrained_ckpt: accepted empty only (configs written before the layered package pass
            ``pretrained_ckpt: ""``); the network reads no files: initialise from a pretraining
            checkpoint with :func:`custom.engines.checkpoints.build_classifier`.
        freeze_encoder: keep the encoder fixed (linear probing): no gradients, eval-mode batch norm.
        encoder_depth: the deepest ResNet stage run (default ``layer4``); its pooled output feeds
            the head. A tower pretrained with ``image_global_layer: layer2`` trained only the stages
            up to ``layer2``: :func:`~custom.engines.checkpoints.build_classifier` then stops there.

    Forward: images (B, 1, H, W) in [0, 1] → logits (B, C).
    """

    def __init__(self, num_classes: int, image_encoder: str = "resnet18", pretrained_ckpt: Any = None,
                 freeze_encoder: bool = True, encoder_depth: str = "layer4") -> None:
        super().__init__()
        refuse_path(pretrained_ckpt, "ImageClassifier", "build_classifier")
        name = str(image_encoder)
        self.encoder_depth = check_stage(encoder_depth, "encoder_depth")
        self.encoder_name = name
        channels = stage_channels(name)  # validates name
        # the region grid is unused here; layer1 is valid beneath every depth
        self.encoder = ImageEncoder(name, local_layer="layer1", global_layer=self.encoder_depth)
        self.head = nn.Linear(channels[self.encoder_depth], int(num_classes))
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
