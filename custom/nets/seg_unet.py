"""A 2-D U-Net whose encoder is the pretrained ResNet image tower: the network of the reclf_seg bundle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import as_bool
from .classifier import refuse_path
from .image_encoder import RESNET_SPECS, STAGES, ImageEncoder, check_stage, stage_channels


def depth_stride(encoder_depth: str) -> int:
    """The input-side multiple a SegUNet of ``encoder_depth`` needs: the stride of the deepest
    stage the decoder climbs back from (stem H/2, layer1 H/4 ... layer4 H/32)."""
    return 2 ** (STAGES.index(encoder_depth) + 2)


class DecoderBlock(nn.Module):
    """×2 nearest upsampling, concatenation with the skip, two 3×3 conv-BN-ReLU.

    Forward: x (B, C_in, h, w), skip (B, C_skip, 2h, 2w) → (B, C_out, 2h, 2w).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.convs(torch.cat([x, skip], dim=1))


class SegUNet(nn.Module):
    """U-Net on the pretrained ResNet image tower (:class:`~custom.nets.image_encoder.ImageEncoder`).

    The encoder is the very module the pretraining trains (same class, same parameter names), so a
    ``reclf_pretrain`` ``model.pt`` loads into it strictly. The decoder climbs from ``layer4``
    (H/32) to H/2 in four upsampling blocks, each concatenating the encoder stage of its
    resolution: ``layer3`` (H/16), ``layer2`` (H/8), ``layer1`` (H/4) and the stem (H/2) (from
    ``encoder_depth`` when that is shallower: ``layer2`` gives two blocks, to ``layer1`` and the
    stem, the last two of ``decoder_channels``); a 1×1
    convolution gives logits at H/2, upsampled bilinearly to H. A decoder block at full resolution
    would cost as much as the whole encoder on a CPU (measured: ~2× slower training at 128 px) for
    a boundary refinement of one pixel; the decoder is also kept thin (128 → 16 channels) so that
    the encoder, the part pretraining informs, dominates the cost.

    Args:
        image_encoder: ``resnet18`` | ``resnet34`` | ``resnet50``.
        pretrained_ckpt: accepted empty only (configs written before the layered package pass
            ``pretrained_ckpt: ""``); the network reads no files: initialise the encoder from a
            pretraining checkpoint with :func:`custom.engines.checkpoints.build_segmenter`.
        freeze_encoder: keep the encoder fixed: no gradients (nor autograd graph), eval-mode batch
            norm (the pretraining statistics); only the decoder trains.
        out_channels: logit channels (1: one foreground class, sigmoid).
        decoder_channels: output channels of the four decoder blocks, deepest first.
        encoder_depth: the deepest encoder stage run (default ``layer4``). A tower pretrained with
            ``image_global_layer: layer2`` trained only the stages up to ``layer2``:
            :func:`~custom.engines.checkpoints.build_segmenter` then stops the U-Net there rather
            than decode from random deep stages.

    Forward: images (B, 1, H, W) in [0, 1], H and W multiples of 32 (``encoder_depth`` ``layer3``:
    16, ``layer2``: 8, ``layer1``: 4) → logits (B, out_channels, H, W).
    """

    def __init__(
        self,
        image_encoder: str = "resnet18",
        pretrained_ckpt: Any = None,
        freeze_encoder: Any = False,
        out_channels: int = 1,
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
        encoder_depth: str = "layer4",
    ) -> None:
        super().__init__()
        refuse_path(pretrained_ckpt, "SegUNet", "build_segmenter")
        name = str(image_encoder)
        if name not in RESNET_SPECS:
            raise ValueError(f"image_encoder: expected one of {sorted(RESNET_SPECS)}, got {name!r}")
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels: expected 4 values (one per decoder block), got {decoder_channels!r}")
        self.encoder_name = name
        self.encoder_depth = check_stage(encoder_depth, "encoder_depth")
        self.stride = depth_stride(self.encoder_depth)
        self.encoder = ImageEncoder(name, local_layer="layer1", global_layer=self.encoder_depth)
        self.freeze_encoder = as_bool(freeze_encoder, "freeze_encoder")
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
        # encoder stage widths: stem 64, then 64·e, 128·e, 256·e, 512·e (e = 4 for bottleneck blocks)
        channels = stage_channels(name)
        blocks = STAGES.index(self.encoder_depth) + 1  # one decoder block per stage below the deepest
        skips = [channels[s] for s in STAGES[: blocks - 1][::-1]] + [64]
        widths = [channels[self.encoder_depth], *map(int, list(decoder_channels)[4 - blocks:])]
        self.decoder = nn.ModuleList(DecoderBlock(widths[i], skips[i], widths[i + 1]) for i in range(blocks))
        self.head = nn.Conv2d(widths[-1], int(out_channels), kernel_size=1)

    def train(self, mode: bool = True) -> SegUNet:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen: batch-norm statistics stay those of pretraining
        return self

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder stages, shallowest first: stem (B, 64, H/2, W/2), layer1 (H/4), layer2 (H/8),
        layer3 (H/16), layer4 (B, 512·e, H/32, W/32), up to ``encoder_depth``."""
        enc = self.encoder
        net = enc.backbone
        x = (images - enc.mean) / enc.std  # the pretraining's input normalisation
        stem = net.act(net.bn1(net.conv1(x)))
        x = net.maxpool(stem) if not net.no_max_pool else stem
        stages = [stem, net.layer1(x)]
        if enc.global_stage >= 2:
            stages.append(net.layer2(stages[-1]))
        if enc.global_stage >= 3:
            stages.append(net.layer3(stages[-1]))
        if enc.global_stage >= 4:
            stages.append(net.layer4(stages[-1]))
        return stages

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(f"SegUNet input {height}x{width}: both sides must be multiples of {self.stride} (image_size)")
        if self.freeze_encoder:
            with torch.no_grad():  # nothing to back-propagate into: keep no encoder graph
                stages = self.encode(images)
        else:
            stages = self.encode(images)
        x = stages[-1]
        for block, skip in zip(self.decoder, stages[-2::-1]):  # layer3, layer2, layer1, stem (below the deepest)
            x = block(x, skip)
        return F.interpolate(self.head(x), size=(height, width), mode="bilinear", align_corners=False)
