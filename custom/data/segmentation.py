"""Segmentation data: image/mask pairs read, resized and padded alike, decoded once, seeded
label-fraction subsets and per-(epoch, index) seeded augmentation (the reclf_seg bundle's datasets).

Geometry. Images and masks are read with :func:`custom.data.io.read_radiograph` (rows top→bottom,
columns left→right as displayed; never MONAI's transposing readers), the longest side resized to
``image_size`` (area interpolation, the pretraining's resize) and zero-padded to a centred square,
with the *same* transforms on both keys; the resized mask is thresholded at 0.5. Augmentation is
mild and applied identically to image and mask; there are no flips (left and right matter).

Datalist items need ``image`` and ``mask`` (DESIGN §4); MONAI Label's training datalists name the
mask ``label``, which is accepted too. Items without a mask are skipped and counted in a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    Resized,
    SpatialPadd,
)
from monai.utils import convert_to_tensor

from ..distributed import rank, world_size
from ..utils import as_bool, as_optional_path, epoch_seed
from .datasets import EpochSeededDataset, decode_images
from .loaders import resolve_workers
from .io import RadiographReadError, read_radiograph
from .labels import stratified_subset

logger = logging.getLogger("reclf")

MASK_KEYS = ("mask", "label")  # DESIGN §4 datalists say "mask"; MONAI Label's training datalists "label"


# ---- reading, geometry ----------------------------------------------------------------------


def read_mask(path: str) -> np.ndarray:
    """A binary mask file (PNG/JPG/DICOM/NIfTI, any bit depth) → (H, W) float32 of 0 / 1.

    Foreground is every pixel at or above half the file's maximum, so 0/1, 0/255 and 0/65535
    masks all read alike (an 8-bit 0/1 PNG reads as 0 and 1/255); an all-zero file is an empty mask.
    """
    values = read_radiograph(path)
    top = float(values.max())
    if top <= 0.0:
        return np.zeros_like(values, dtype=np.float32)
    return (values >= 0.5 * top).astype(np.float32)


def mask_path(item: dict[str, Any]) -> str | None:
    """The mask file of a datalist item (``mask``, else ``label`` when it is a path), or None."""
    for key in MASK_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


class LoadImageMaskd(MapTransform):
    """Read ``image`` (:func:`read_radiograph`) and ``label`` (:func:`read_mask`) file paths into
    channel-first (1, H, W) float32 arrays; the two must have the same size."""

    def __init__(self, keys: Sequence[str] = ("image", "label")) -> None:
        super().__init__(keys)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        image_key, mask_key = self.keys
        image = read_radiograph(out[image_key])
        mask = read_mask(out[mask_key])
        if image.shape != mask.shape:
            raise RadiographReadError(
                f"{out[mask_key]}: mask of size {mask.shape[0]}x{mask.shape[1]} (rows x columns) but its image "
                f"{out[image_key]} is {image.shape[0]}x{image.shape[1]}: a mask must cover its image pixel for pixel"
            )
        out[image_key], out[mask_key] = image[None], mask[None]
        return out


class Binarized(MapTransform):
    """``label`` → uint8 {0, 1} (``>= 0.5``: undoes the area interpolation's soft edges)."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = (np.asarray(out[key]) >= 0.5).astype(np.uint8)
        return out


def pair_transform(image_size: int) -> Compose:
    """Deterministic part (decoded once): read image + mask, resize the longest side to
    ``image_size`` and pad to a centred square, both alike (the image exactly as
    :func:`custom.data.image_transform` does it), then binarise the mask."""
    size = int(image_size)
    keys = ("image", "label")
    return Compose(
        [
            LoadImageMaskd(keys),
            Resized(keys, spatial_size=size, size_mode="longest", mode="area"),
            SpatialPadd(keys, spatial_size=(size, size)),
            Binarized(("label",)),
        ]
    )


def augment_pairs() -> Compose:
    """Mild random augmentation, identical geometry on image and mask (the pretraining's ranges);
    nearest interpolation keeps the mask binary. No flips: left and right matter."""
    return Compose(
        [
            RandAffined(
                ("image", "label"), prob=0.8, rotate_range=0.08, scale_range=0.08, translate_range=0.04,
                padding_mode="zeros", mode=("bilinear", "nearest"),
            ),
            RandAdjustContrastd(("image",), prob=0.5, gamma=(0.8, 1.25)),
        ]
    )


def with_masks(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items that have an image and a mask, as ``{"image", "label", "item"}`` records; the
    others are skipped and counted in a log line (a shared datalist may hold unsegmented images)."""
    kept = [{"image": it["image"], "label": mask_path(it), "item": it} for it in items
            if it.get("image") and mask_path(it) is not None]
    if len(kept) < len(items):
        first = next(it for it in items if not it.get("image") or mask_path(it) is None)
        logger.warning("%d of %d item(s) without a mask skipped for segmentation (e.g. %s[%s] %s)",
                       len(items) - len(kept), len(items), first.get("split", "?"), first.get("row", "?"),
                       first.get("image"))
    return kept


def decode_pairs(
    items: Sequence[dict[str, Any]], image_size: int, cache_dir: str | None = None, bad_images: str = "error",
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Decode, resize and pad every image/mask pair once, before training, and apply the bad-image
    policy (a broken file fails here naming its datalist row, or is skipped and counted).

    Args:
        items: ``{"image": path, "label": mask path, "item": datalist item}`` (:func:`with_masks`).
        cache_dir: a folder for the on-disk uint8 cache of the decoded pairs
            (:class:`custom.image_cache.ImageCache`, keyed by both files and the size; reused by
            later runs and by ``python -m custom cache --task seg``); "" or None: decode in memory.

    Returns:
        images (N, 1, S, S) float32 in [0, 1], masks (N, 1, S, S) uint8 {0, 1}, the items kept.
    """
    size = int(image_size)
    records = [{**it["item"], "image": it["image"], "label": it["label"], "_pair": n} for n, it in enumerate(items)]
    decoded, kept = decode_images(records, pair_transform(size), as_optional_path(cache_dir), bad_images, workers,
                                  keys=("image", "label"), noun="image/mask pair")
    keep = [rec["_pair"] for rec in kept]
    images = np.zeros((len(keep), 1, size, size), dtype=np.float32)
    masks = np.zeros((len(keep), 1, size, size), dtype=np.uint8)
    for row in range(len(keep)):
        pair = decoded[row]
        images[row] = np.asarray(pair["image"], dtype=np.float32)
        masks[row] = np.asarray(pair["label"], dtype=np.uint8)
    return images, masks, [dict(items[n]) for n in keep]


# ---- dataset, loader ------------------------------------------------------------------------


class SegDataset(EpochSeededDataset):
    """Image/mask pairs, decoded once; a seeded label-fraction subset; per-(epoch, index) seeded
    augmentation (the same batches whatever the worker count).

    Args:
        data: datalist items with ``image`` and ``mask`` (or ``label``); others are skipped (counted).
        image_size: square side S in pixels (a multiple of 32 for :class:`SegUNet`).
        augment: apply :func:`augment_pairs` (training only).
        seed: augmentation seed.
        label_fraction: share of the (readable, masked) items kept, in (0, 1]; drawn by
            :func:`custom.linear_probe.stratified_subset` with strata "empty mask" / "non-empty
            mask" (the demo has many empty masks), seeded by ``label_seed``.
        cache_dir, bad_images: see :func:`decode_pairs`.

    Items: ``{"image": (1, S, S) float32, "label": (1, S, S) float32 {0, 1}, "index": int}``.
    """

    def __init__(
        self, data: Sequence[dict[str, Any]], image_size: int = 128, augment: Any = False, seed: int = 0,
        label_fraction: float = 1.0, label_seed: int = 0, cache_dir: str | None = "", bad_images: str = "error",
        workers: int = 0,
    ) -> None:
        size = int(image_size)
        if size % 32:
            raise ValueError(f"image_size: the U-Net needs a multiple of 32, got {size}")
        images, masks, items = decode_pairs(with_masks(list(data)), size, cache_dir, bad_images, workers)
        self.n_available = len(items)
        self.label_fraction = float(label_fraction)
        self.label_seed = int(label_seed)
        nonempty = masks.reshape(len(masks), -1).any(1).astype(np.int64)
        keep = stratified_subset(nonempty, self.label_fraction, self.label_seed)  # all at 1.0; checks the range
        if len(keep) < len(items):
            images, masks, items = images[keep], masks[keep], [items[i] for i in keep]
        self.images = torch.from_numpy(images)
        self.masks = torch.from_numpy(masks)
        self.items = [it["item"] for it in items]
        self.augment = augment_pairs() if as_bool(augment, "augment") else None
        self.seed = int(seed)
        self.epoch = 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = {"image": self.images[index], "label": self.masks[index].float()}
        if self.augment is not None:
            self.augment.set_random_state(seed=(epoch_seed(self.seed, self.epoch) + 104729 * int(index)) % (2**32))
            pair = self.augment(pair)
        image = convert_to_tensor(pair["image"], dtype=torch.float32, track_meta=False)
        label = (convert_to_tensor(pair["label"], track_meta=False) >= 0.5).float()
        return {"image": image.contiguous(), "label": label.contiguous(), "index": int(index)}


class _EpochSampler(torch.utils.data.DistributedSampler):
    """A DistributedSampler (one replica unless distributed) whose ``set_epoch`` — called by MONAI's
    workflow at every epoch start — also sets the dataset's augmentation epoch."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def seg_loader(
    dataset: SegDataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0,
    distributed: bool = False,
) -> torch.utils.data.DataLoader:
    """Batches of ``{"image", "label", "index"}`` whose order depends only on (seed, epoch); under
    ``torchrun`` with ``distributed`` each process takes its shard. The last, smaller batch is kept
    (a 1 % label fraction may hold fewer items than one batch)."""
    if len(dataset) == 0:
        raise ValueError("no image/mask pairs to load: the split holds no readable item with a mask")
    replicas, me = (world_size(), rank()) if distributed else (1, 0)
    num_workers = resolve_workers(num_workers)  # an int, or auto
    sampler = _EpochSampler(dataset, num_replicas=replicas, rank=me, shuffle=bool(shuffle), seed=int(seed))
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(batch_size), sampler=sampler, num_workers=int(num_workers),
        generator=torch.Generator().manual_seed(int(seed)),  # worker seeding leaves the global RNG alone
    )
