"""The image tower of a pretraining model as a stand-alone network: what an exported reclf_pretrain
bundle names as ``network_def`` for MONAI's ``verify_net_in_out`` and ``ckpt_export`` (TorchScript)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import RESNET_SPECS, ImageEncoder
from .reclf import ProjectionHead

# the RECLFModel submodules the image tower consists of (same attribute names, so the same keys)
TOWER_PREFIXES = ("image_encoder.", "image_projection.")


class PretrainImageTower(nn.Module):
    """Image encoder + global projection of :class:`~custom.nets.reclf.RECLFModel`.

    Args:
        image_encoder: ``resnet18`` | ``resnet34`` | ``resnet50`` (``model.json``'s ``image_encoder``).
        embed_dim: D_g, the joint embedding size (``model.json``'s ``model.embed_dim``).

    Forward: images (B, 1, H, W) in [0, 1] → L2-normalised global embeddings (B, D_g), the same
    vectors ``RECLFModel.encode_image(images)["global"]`` gives (and inference.yaml writes).

    :meth:`load_state_dict` takes a whole pretraining ``model.pt`` (both towers, local heads) and
    keeps the ``image_encoder.*`` / ``image_projection.*`` entries: MONAI's ``ckpt_export`` loads
    ``models/model.pt`` into the network strictly, and the text tower is not part of this one.
    """

    def __init__(self, image_encoder: str = "resnet18", embed_dim: int = 128) -> None:
        super().__init__()
        if image_encoder not in RESNET_SPECS:
            raise ValueError(f"image_encoder: expected one of {sorted(RESNET_SPECS)}, got {image_encoder!r}")
        self.image_encoder = ImageEncoder(image_encoder)
        self.image_projection = ProjectionHead(self.image_encoder.global_channels, int(embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.image_encoder(images)["global"]
        return F.normalize(self.image_projection(pooled), dim=-1)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load the image-tower entries of a full pretraining state dict (``module.`` prefixes from
        DDP dropped); with ``strict`` every tower parameter must be there with its shape."""
        state = {k.removeprefix("module."): v for k, v in state_dict.items()}
        tower = {k: v for k, v in state.items() if k.startswith(TOWER_PREFIXES)}
        if strict and not tower:
            raise RuntimeError(
                f"no {'/'.join(p + '*' for p in TOWER_PREFIXES)} entries: not a reclf pretraining state dict"
            )
        return super().load_state_dict(tower, strict=strict, assign=assign)
