"""Chest X-ray image encoder: MONAI ResNet in torchvision's layout, a local grid and a global vector."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck


# (block, layers, local-grid channels (layer3), global channels (layer4))
RESNET_SPECS: dict[str, tuple[type, list[int], int, int]] = {
    "resnet18": (ResNetBlock, [2, 2, 2, 2], 256, 512),
    "resnet34": (ResNetBlock, [3, 4, 6, 3], 256, 512),
    "resnet50": (ResNetBottleneck, [3, 4, 6, 3], 1024, 2048),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")
# ImageNet statistics averaged over RGB: grayscale radiographs fed to ImageNet-initialised weights.
GRAY_MEAN, GRAY_STD = 0.449, 0.226


def stage_channels(name: str) -> dict[str, int]:
    """Output channels of each ResNet stage (``layer1`` .. ``layer4``) of ``name``."""
    if name not in RESNET_SPECS:
        raise ValueError(f"image_encoder: expected one of {sorted(RESNET_SPECS)}, got {name!r}")
    expansion = 4 if RESNET_SPECS[name][0] is ResNetBottleneck else 1
    return {stage: c * expansion for stage, c in zip(STAGES, (64, 128, 256, 512))}


def check_stage(stage: object, what: str) -> str:
    """``stage`` as a ResNet stage name (``layer1`` .. ``layer4``), or an error naming the setting ``what``."""
    if str(stage) not in STAGES:
        raise ValueError(f"{what}: expected one of {list(STAGES)}, got {stage!r}")
    return str(stage)


def build_resnet(name: str) -> ResNet:
    """A 2-D MONAI ResNet whose parameter names and shapes match torchvision's (minus ``fc``).

    ``shortcut_type='B'``, ``bias_downsample=False`` and ``conv1_t_stride=2`` are what make
    torchvision ImageNet weights load strictly; MONAI's defaults differ (DESIGN §7). One input
    channel: the ImageNet ``conv1`` is summed over RGB when loaded (equivalent to a gray image
    repeated on three channels, at a third of the cost).
    """
    if name not in RESNET_SPECS:
        raise ValueError(f"image_encoder: expected one of {sorted(RESNET_SPECS)}, got {name!r}")
    block, layers, _, _ = RESNET_SPECS[name]
    return ResNet(
        block,
        layers,
        [64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )


class ImageEncoder(nn.Module):
    """ResNet image encoder giving a global vector and a local region grid. Pretrained ResNet weights
    (a user's file) load into ``backbone`` with :func:`custom.engines.image_weights.load_torchvision_weights`.

    Args:
        name: ``resnet18`` | ``resnet34`` | ``resnet50``.
        local_layer: the stage whose output is the region grid (default ``layer3``: h = H/16;
            ``layer2``: H/8, ``layer1``: H/4), so small images still give a fine grid.
        global_layer: the stage whose pooled output is the global vector (default ``layer4``); the
            stages after it are not run (a truncated, cheaper encoder). Their parameters stay in
            the module, untrained, so the state dict keeps torchvision's layout whatever the stages.

    Forward:
        images: (B, 1, H, W) intensities in [0, 1].
        returns ``global`` (B, C) pooled ``global_layer`` features and ``local`` (B, C', h, w)
        ``local_layer`` features, the grid whose cells are the "regions" of local matching.
    """

    def __init__(self, name: str = "resnet18", local_layer: str = "layer3", global_layer: str = "layer4") -> None:
        super().__init__()
        self.name = name
        self.backbone = build_resnet(name)
        local_layer = check_stage(local_layer, "image_local_layer")
        global_layer = check_stage(global_layer, "image_global_layer")
        if STAGES.index(global_layer) < STAGES.index(local_layer):
            raise ValueError(f"image_global_layer {global_layer!r} comes before image_local_layer {local_layer!r}")
        self.local_layer, self.global_layer = local_layer, global_layer
        # stage numbers (1..4) as plain ints: TorchScript (the exported inference network) can
        # neither index a global tuple nor getattr a stage by name
        self.local_stage, self.global_stage = STAGES.index(local_layer) + 1, STAGES.index(global_layer) + 1
        channels = stage_channels(name)
        self.local_channels, self.global_channels = channels[local_layer], channels[global_layer]
        self.register_buffer("mean", torch.tensor(GRAY_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(GRAY_STD), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.backbone
        x = (images - self.mean) / self.std
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        x = net.layer1(x)
        local = x
        if self.global_stage >= 2:
            x = net.layer2(x)
            if self.local_stage == 2:
                local = x
            if self.global_stage >= 3:
                x = net.layer3(x)
                if self.local_stage == 3:
                    local = x
                if self.global_stage >= 4:
                    x = net.layer4(x)
                    if self.local_stage == 4:
                        local = x
        return {"global": F.adaptive_avg_pool2d(x, 1).flatten(1), "local": local}
