"""Image transforms of the pretraining and the downstream tasks: radiograph reading, longest-side resize
and padding to a square, mild augmentation (never flips: left and right matter)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from monai.transforms import Compose, MapTransform, RandAffined, RandAdjustContrastd, SpatialPadd

from .io import read_radiograph
from ..utils import as_int

logger = logging.getLogger("reclf")


class LoadRadiographd(MapTransform):
    """Read ``keys`` with :func:`custom.io.read_radiograph` into channel-first (1, H, W) float32.

    ``reduce_to``: the longest side a later resize gives (JPEGs then decode at a reduced scale
    that stays at or above it; part of the image cache key)."""

    def __init__(self, keys: Sequence[str] = ("image",), reduce_to: int | None = None) -> None:
        super().__init__(keys)
        self.reduce_to = int(reduce_to) if reduce_to else None

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = read_radiograph(out[key], self.reduce_to)[None]
        return out


class ResizeLongestd(MapTransform):
    """Resize (C, H, W) ``keys`` so the longest side is ``size``, keeping the aspect ratio; the
    short side never goes below one pixel. (MONAI's ``Resized(size_mode="longest")`` rounds a
    3000 x 2 strip to a 0-pixel side, which then fails far from the cause.)"""

    def __init__(self, keys: Sequence[str], size: int, mode: str = "area") -> None:
        super().__init__(keys)
        self.size, self.mode = int(size), mode

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from monai.transforms import Resize

        out = dict(data)
        for key in self.key_iterator(out):
            shape = tuple(int(n) for n in out[key].shape[1:])
            scale = self.size / max(shape)
            target = tuple(max(1, int(round(n * scale))) for n in shape)
            out[key] = Resize(spatial_size=target, mode=self.mode)(out[key])
        return out


def image_transform(image_size: int) -> Compose:
    """Deterministic part (cached): read, resize the longest side to ``image_size``, pad to square."""
    size = as_int(image_size, "image_size", minimum=8)
    return Compose(
        [
            LoadRadiographd(("image",), reduce_to=size),
            ResizeLongestd(("image",), size, mode="area"),
            SpatialPadd(("image",), spatial_size=(size, size)),
        ]
    )


def augment_transform() -> Compose:
    """Mild random augmentation. No flips: a flip would swap "left" and "right" in the report."""
    return Compose(
        [
            RandAffined(
                ("image",), prob=0.8, rotate_range=0.08, scale_range=0.08, translate_range=0.04,
                padding_mode="zeros", mode="bilinear",
            ),
            RandAdjustContrastd(("image",), prob=0.5, gamma=(0.8, 1.25)),
        ]
    )
