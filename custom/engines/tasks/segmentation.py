"""Segmentation on the pretrained image encoder (DESIGN §3): the reclf_seg bundle's data, metrics,
handlers, evaluation and inference.

Geometry. Images and masks are read with :func:`custom.io.read_radiograph` (rows top→bottom,
columns left→right as displayed; never MONAI's transposing readers), the longest side resized to
``image_size`` (area interpolation, the pretraining's resize) and zero-padded to a centred square,
with the *same* transforms on both keys; the resized mask is thresholded at 0.5. Augmentation is
mild and applied identically to image and mask; there are no flips (left and right matter).

Metrics are per image on that ``image_size`` × ``image_size`` grid: the prediction is
``sigmoid(logits) >= 0.5``; Dice and IoU per image, averaged (an empty prediction on an empty mask
scores 1); ``dice_pos`` / ``iou_pos`` average the images whose mask is non-empty (null when there
is none). Inference instead restores the input's own geometry: the padding is cropped off and the
probabilities resized back to the original size before thresholding.

Datalist items need ``image`` and ``mask`` (DESIGN §4); MONAI Label's training datalists name the
mask ``label``, which is accepted too. Items without a mask are skipped and counted in a log line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.handlers import ValidationHandler
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    Resized,
    SpatialPadd,
)
from monai.utils import convert_to_tensor

from ...data.datasets import EpochSeededDataset, decode_images, load_datalist, resolve_workers
from ..checkpoints import load_weights_strict, read_model_meta, require_checkpoint
from ...distributed import is_main_process, rank, world_size
from ...data.io import RadiographReadError, read_radiograph
from ...data.labels import stratified_subset
from ...metrics import dice_iou, nan_to_none
from ...nets.factory import unwrap
from ...nets.seg_unet import SegUNet
from ...utils import as_bool, as_choice, as_int, as_optional_path, atomic_write_text, autocast, epoch_seed

logger = logging.getLogger("reclf")

THRESHOLD = 0.5
TRAIN_FIRST = "run bundles/reclf_seg/configs/train.yaml first (or pass --ckpt PATH/model.pt)"
MASK_KEYS = ("mask", "label")  # DESIGN §4 datalists say "mask"; MONAI Label's training datalists "label"
# validation images may cost at most this share of the training images between validations
# (`val_interval: auto`); an evaluation forward pass costs about a third of a training step
VAL_SHARE = 0.25


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


# ---- training schedule, loss ------------------------------------------------------------------


def _int_or_auto(value: Any, name: str) -> int | None:
    """A positive int, or None for ``auto``; anything else is refused naming ``name``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return as_int(value, name, minimum=1)
    except ValueError:
        raise ValueError(f"{name}: expected a positive int or 'auto', got {value!r}") from None


def resolve_epochs(epochs: Any, train_samples: int, n_train: int) -> int:
    """``epochs``: a positive int, or ``auto`` = ceil(train_samples / n_train), a fixed budget of
    training images seen whatever the data size or label fraction (the demo's 1200 pairs then
    take a few passes, 89 lung masks many)."""
    value = _int_or_auto(epochs, "epochs")
    if value is not None:
        return value
    if n_train <= 0:
        raise ValueError("epochs=auto: no training items")
    return max(1, math.ceil(int(train_samples) / n_train))


def resolve_val_interval(val_interval: Any, n_val: int, n_train: int) -> int:
    """``val_interval``: validate every N epochs, or ``auto``: every epoch unless the validation
    images outnumber ``VAL_SHARE`` of the training images, then every ceil(n_val / (VAL_SHARE ·
    n_train)) epochs (small label fractions would otherwise spend most time validating)."""
    value = _int_or_auto(val_interval, "val_interval")
    if value is not None:
        return value
    return max(1, math.ceil(int(n_val) / max(VAL_SHARE * int(n_train), 1e-9)))


def seg_loss(name: str = "dice_ce") -> torch.nn.Module:
    """``dice_ce``: soft Dice + binary cross-entropy; ``dice_focal``: soft Dice + focal loss. Both on
    sigmoid(logits) of (B, 1, H, W), the Dice term over the whole batch (``batch=True``) so that
    images with empty masks do not each contribute a 0/0 term."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    name = as_choice(name, ("dice_ce", "dice_focal"), "loss")
    if name == "dice_ce":
        return DiceCELoss(sigmoid=True, batch=True)
    return DiceFocalLoss(sigmoid=True, batch=True)


# ---- validation: metric, handlers -------------------------------------------------------------


def _summary(dice: np.ndarray, iou: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    """Mean per-image Dice / IoU over all images and over those with a non-empty mask."""
    n, n_pos = len(dice), int(positive.sum())
    return nan_to_none({
        "dice": float(dice.mean()) if n else float("nan"),
        "dice_pos": float(dice[positive].mean()) if n_pos else float("nan"),
        "iou": float(iou.mean()) if n else float("nan"),
        "iou_pos": float(iou[positive].mean()) if n_pos else float("nan"),
        "n_samples": int(n),
        "n_pos": n_pos,
    })


class SegMetric(Metric):
    """Ignite metric over an evaluator's ``(pred logits (B, 1, H, W), label (B, 1, H, W))`` output:
    per-image ``dice`` | ``dice_pos`` | ``iou`` | ``iou_pos`` at sigmoid >= 0.5, averaged (NaN when
    undefined: no image, or no non-empty mask for the ``_pos`` kinds)."""

    KINDS = ("dice", "dice_pos", "iou", "iou_pos")

    def __init__(self, kind: str = "dice", output_transform: Callable = lambda out: (out["pred"], out["label"]),
                 device: str | torch.device = "cpu") -> None:
        self.kind = as_choice(kind, self.KINDS, "kind")
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._dice: list[np.ndarray] = []
        self._iou: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []

    def update(self, output: Sequence[torch.Tensor]) -> None:
        logits, label = output
        truth = torch.as_tensor(label).detach().cpu() >= 0.5
        dice, iou = dice_iou(torch.sigmoid(torch.as_tensor(logits).detach().float().cpu()) >= THRESHOLD, truth)
        self._dice.append(dice)
        self._iou.append(iou)
        self._pos.append(truth.flatten(1).any(1).numpy())

    def compute(self) -> float:
        if not self._dice:
            return float("nan")
        value = _summary(np.concatenate(self._dice), np.concatenate(self._iou), np.concatenate(self._pos))[self.kind]
        return float("nan") if value is None else float(value)


class ValidateEvery(ValidationHandler):
    """MONAI's ValidationHandler every ``interval`` epochs *and* at the last epoch (so that the
    final weights are always a candidate for the best checkpoint)."""

    def attach(self, engine: Engine) -> None:
        every = max(1, int(self.interval))
        engine.add_event_handler(
            Events.EPOCH_COMPLETED(event_filter=lambda e, epoch: epoch % every == 0 or epoch == e.state.max_epochs),
            self,
        )


class SaveBestSegmentation:
    """Evaluator handler: after each validation, if ``key_metric`` (validation Dice) beats the best
    so far, write the network's plain state dict (no ``module.`` prefix) to ``save_path``
    atomically, and ``model.json`` beside it (the network's encoder, ``meta`` and the epoch).

    Process 0 only. ``meta``: image_size, pretrained_ckpt, label_fraction, label_seed, n_train, ...
    """

    def __init__(self, network: torch.nn.Module, save_path: str, meta: dict[str, Any] | None = None,
                 key_metric: str = "val_dice") -> None:
        self.network = network
        self.save_path = save_path
        self.meta = dict(meta or {})
        self.key_metric = key_metric
        self.best: float | None = None
        self.best_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.key_metric)
        epoch = int(engine.state.epoch)
        metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in engine.state.metrics.items()}
        if value is None or math.isnan(float(value)):
            logger.warning("epoch %d: validation %s undefined; checkpoint not updated", epoch, self.key_metric)
            return
        improved = self.best is None or float(value) > self.best
        if improved:
            self.best, self.best_epoch = float(value), epoch
            if is_main_process():
                save_segmenter(self.network, self.save_path, {**self.meta, "best_epoch": epoch, **metrics})
        if is_main_process():
            logger.info("epoch %d validation: %s (best %s %.4f at epoch %d%s)", epoch,
                        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
                        self.key_metric, self.best, self.best_epoch, ", saved" if improved else "")


def save_segmenter(network: torch.nn.Module, path: str, meta: dict[str, Any]) -> None:
    """``path`` ← the :class:`SegUNet` state dict; ``model.json`` beside it ← its encoder + ``meta``."""
    from ..checkpoints import write_checkpoint

    net = unwrap(network)
    info = {"network": "SegUNet", "image_encoder": net.encoder_name,
            "freeze_encoder": bool(net.freeze_encoder), "out_channels": int(net.head.out_channels),
            "threshold": THRESHOLD, **meta}
    write_checkpoint(path, net.state_dict(), info, "segmentation")


# ---- evaluation ---------------------------------------------------------------------------------


def require_segmenter(ckpt: Any) -> str:
    """The segmentation checkpoint path, or a clear error naming the command that makes it."""
    return require_checkpoint(ckpt, "segmentation checkpoint", TRAIN_FIRST)


def load_segmenter_weights(network: torch.nn.Module, ckpt: str) -> None:
    """Load a reclf_seg ``model.pt`` (a plain state dict) strictly into ``network``."""
    load_weights_strict(network, ckpt, "image_encoder comes from the model.json beside it")


@torch.no_grad()
def predict_logits(network: torch.nn.Module, images: torch.Tensor, device: str | torch.device, batch_size: int = 16,
                   amp: bool = False) -> torch.Tensor:
    """(N, 1, S, S) images → (N, 1, S, S) float32 logits on the CPU, in batches, eval mode."""
    net = unwrap(network).eval()
    device = torch.device(device)
    out = [torch.zeros(0, 1, *images.shape[-2:])]
    for start in range(0, len(images), int(batch_size)):
        with autocast(device, amp):
            out.append(net(images[start:start + int(batch_size)].to(device)).float().cpu())
    return torch.cat(out)


class SegEvaluator:
    """``evaluate.yaml``: a reclf_seg ``model.pt`` (+ its ``model.json``) on ``eval_split``, written to
    ``output`` as flat JSON: ``dice``, ``dice_pos``, ``iou``, ``iou_pos`` (per image at 0.5, on the
    ``image_size`` grid), ``n_samples``, ``n_pos``, ``eval_split``, ``checkpoint`` and the training's
    ``label_fraction``, ``n_train``, ``pretrained_ckpt``, ``freeze_encoder`` (from ``model.json``)."""

    def __init__(self, ckpt: str, datalist: str, dataset_dir: str, output: str, eval_split: str = "test",
                 image_size: int = 128, batch_size: int = 16, num_workers: int = 0, device: str = "cpu",
                 amp: Any = False, bad_images: str = "error", cache_dir: str | None = "") -> None:
        self.ckpt, self.datalist, self.dataset_dir, self.output = ckpt, datalist, dataset_dir, output
        self.eval_split = str(eval_split)
        self.image_size, self.batch_size, self.num_workers = int(image_size), int(batch_size), int(num_workers)
        self.device = torch.device(device)
        self.amp = as_bool(amp, "amp")
        self.bad_images, self.cache_dir = bad_images, cache_dir

    def load(self) -> tuple[SegUNet, dict[str, Any]]:
        """The segmenter (strict load) and its ``model.json``."""
        ckpt = require_segmenter(self.ckpt)
        meta = read_model_meta(ckpt, self.image_size, "segmentation")
        net = SegUNet(meta["image_encoder"], out_channels=int(meta.get("out_channels", 1)))
        load_segmenter_weights(net, ckpt)
        return net.to(self.device).eval(), meta

    def run(self) -> dict[str, Any]:
        net, meta = self.load()
        items = load_datalist(self.datalist, self.dataset_dir, self.eval_split, require=["image"], missing="skip")
        dataset = SegDataset(items, self.image_size, augment=False, cache_dir=self.cache_dir,
                             bad_images=self.bad_images)
        if len(dataset) == 0:
            raise ValueError(f"datalist {self.datalist!r} has no image/mask pairs in split {self.eval_split!r}")
        logits = predict_logits(net, dataset.images, self.device, self.batch_size, self.amp)
        truth = dataset.masks.bool()
        dice, iou = dice_iou(torch.sigmoid(logits) >= THRESHOLD, truth)
        metrics = _summary(dice, iou, truth.flatten(1).any(1).numpy())
        metrics.update(
            threshold=THRESHOLD, grid=f"{self.image_size}x{self.image_size} (longest side resized, zero-padded)",
            eval_split=self.eval_split, checkpoint=os.path.abspath(self.ckpt),
            **{k: meta.get(k) for k in ("label_fraction", "label_seed", "n_train", "pretrained_ckpt",
                                       "freeze_encoder", "image_encoder", "image_size", "best_epoch")},
        )
        metrics = nan_to_none(metrics)
        atomic_write_text(json.dumps(metrics, indent=2), self.output)
        logger.info("wrote %s: %s", self.output, json.dumps(metrics))
        print(json.dumps(metrics, indent=2), flush=True)
        return metrics


# ---- inference (the MONAI Label pieces) ---------------------------------------------------------


class _MetaDictTransform(MapTransform):
    """A dict transform that also writes ``<key>_<meta_key_postfix>`` (MONAI Label's meta dicts)."""

    def __init__(self, keys: Sequence[str] = ("image",), meta_key_postfix: str = "meta_dict") -> None:
        super().__init__(keys)
        self.postfix = meta_key_postfix


class LoadRadiographMetad(_MetaDictTransform):
    """Read ``image`` paths with :func:`read_radiograph` into (1, H, W) float32 and record, in
    ``image_meta_dict``, the file and its ``spatial_shape`` (H, W) (what MONAI Label's ``Restored``
    reads; identity affines: a radiograph has no patient coordinates here)."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            path = str(out[key])
            pixels = read_radiograph(path)
            out[key] = pixels[None]
            out[f"{key}_{self.postfix}"] = {"filename_or_obj": path, "spatial_shape": np.asarray(pixels.shape),
                                           "original_affine": np.eye(3), "affine": np.eye(3)}
        return out


class RecordResizedShaped(_MetaDictTransform):
    """Record ``image``'s current spatial shape as ``image_meta_dict["resized_shape"]`` (placed
    between the resize and the padding, so the padding can be cropped off again)."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            meta = dict(out.get(f"{key}_{self.postfix}") or {})
            meta["resized_shape"] = np.asarray(out[key].shape[1:])
            out[f"{key}_{self.postfix}"] = meta
        return out


def inference_transform(image_size: int) -> Compose:
    """``preprocessing``: path → (1, S, S) float32 tensor, the training geometry
    (:func:`pair_transform`'s image), with the original and resized sizes recorded."""
    size = int(image_size)
    return Compose(
        [
            LoadRadiographMetad(("image",)),
            Resized(("image",), spatial_size=size, size_mode="longest", mode="area"),
            RecordResizedShaped(("image",)),
            SpatialPadd(("image",), spatial_size=(size, size)),
            EnsureTyped(("image",), data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


class RestoreGeometryd(MapTransform):
    """Undo the preprocessing geometry on ``pred`` (C, S, S): crop the centred padding
    (SpatialPad puts floor(extra / 2) before), then resize to the original ``spatial_shape``
    (bilinear, antialiased when shrinking) — applied to probabilities, thresholded afterwards.

    Reads ``image_meta_dict`` (``spatial_shape``, ``resized_shape``), written by
    :func:`inference_transform`.
    """

    def __init__(self, keys: Sequence[str] = ("pred",), ref_image: str = "image",
                 meta_key_postfix: str = "meta_dict") -> None:
        super().__init__(keys)
        self.meta_key = f"{ref_image}_{meta_key_postfix}"

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        meta = out[self.meta_key]
        height, width = (int(v) for v in np.asarray(meta["spatial_shape"]).ravel()[-2:])
        inner_h, inner_w = (int(v) for v in np.asarray(meta["resized_shape"]).ravel()[-2:])
        for key in self.key_iterator(out):
            pred = convert_to_tensor(out[key], dtype=torch.float32, track_meta=False)
            top, left = (pred.shape[-2] - inner_h) // 2, (pred.shape[-1] - inner_w) // 2
            pred = pred[..., top:top + inner_h, left:left + inner_w]
            out[key] = F.interpolate(pred[None], size=(height, width), mode="bilinear", align_corners=False,
                                     antialias=height < inner_h or width < inner_w)[0]
        return out


def _mask_name(path: str, used: set[str]) -> str:
    base = os.path.basename(path)
    stem = base[:-7] if base.lower().endswith(".nii.gz") else os.path.splitext(base)[0]
    name, n = f"{stem}.png", 1
    while name in used:  # the same file name from two folders
        name, n = f"{stem}-{n}.png", n + 1
    used.add(name)
    return name


class SegPredictor:
    """``inference.yaml``: segment image files or a datalist split; write one PNG mask per image
    (0 / 255, the input's own size and orientation: rows and columns as displayed) into
    ``mask_dir`` and a summary JSON to ``output``.

    Args:
        network: the instantiated ``network_def`` (a :class:`SegUNet`); ``ckpt`` loads into it strictly.
        preprocessing: dict transform on ``image`` (path → (1, S, S)), :func:`inference_transform`.
        inferer: ``inferer(images (B, 1, S, S), network)`` → logits (B, 1, S, S).
        postprocessing: dict transform on one item with ``pred`` (1, S, S) logits → (1, H, W) {0, 1}.
        input_files: image paths / a folder / a list; when empty, the ``eval_split`` items of
            ``datalist`` are segmented.
        threshold: the probability threshold ``postprocessing`` applies (recorded in the JSON).
    """

    def __init__(
        self, network: torch.nn.Module, preprocessing: Callable, inferer: Callable, postprocessing: Callable,
        ckpt: str, output: str, mask_dir: str, input_files: Any = None, datalist: str | None = None,
        dataset_dir: str | None = None, eval_split: str = "test", batch_size: int = 8, num_workers: int = 0,
        device: str | torch.device = "cpu", amp: Any = False, threshold: float = THRESHOLD,
    ) -> None:
        self.network, self.preprocessing = network, preprocessing
        self.inferer, self.postprocessing = inferer, postprocessing
        self.ckpt, self.output, self.mask_dir = ckpt, output, mask_dir
        self.input_files, self.datalist, self.dataset_dir, self.eval_split = input_files, datalist, dataset_dir, eval_split
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.device, self.amp = torch.device(device), as_bool(amp, "amp")
        self.threshold = float(threshold)  # recorded; postprocessing applies it

    def _paths(self) -> tuple[list[str], dict[str, Any]]:
        from ..inference import expand_input_files

        paths = expand_input_files(self.input_files)
        if paths:
            return paths, {"source": "input_files"}
        if as_optional_path(self.datalist) is None:
            raise ValueError("nothing to segment: pass --input_files or a --datalist with an --eval_split")
        items = load_datalist(self.datalist, self.dataset_dir or "", self.eval_split)
        if not items:
            raise ValueError(f"datalist {self.datalist!r} has no items in split {self.eval_split!r}")
        return [it["image"] for it in items], {"source": "datalist", "datalist": os.path.abspath(self.datalist),
                                               "eval_split": self.eval_split}

    @torch.no_grad()
    def run(self) -> str:
        from PIL import Image

        from ..inference import TolerantItems, collate_ok, report_skipped

        ckpt = require_segmenter(self.ckpt)
        load_segmenter_weights(self.network, ckpt)
        net = self.network.to(self.device).eval()
        paths, source = self._paths()
        # an unreadable file is skipped and listed in the JSON; the others are segmented
        dataset = TolerantItems([{"image": p} for p in paths], self.preprocessing)
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.num_workers, collate_fn=collate_ok)
        os.makedirs(self.mask_dir, exist_ok=True)
        used: set[str] = set()
        records: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        for batch, failed in loader:
            skipped += failed
            if not batch:
                continue
            images = torch.stack([torch.as_tensor(d["image"], dtype=torch.float32) for d in batch]).to(self.device)
            with autocast(self.device, self.amp):
                logits = self.inferer(images, net).float().cpu()
            for data, row in zip(batch, logits):
                # per item, exactly as MONAI Label applies postprocessing to one prediction
                pred = torch.as_tensor(self.postprocessing({**data, "pred": row})["pred"])
                mask = (pred[0] > 0).numpy().astype(np.uint8) * 255  # postprocessing thresholded it
                path = data["image_meta_dict"]["filename_or_obj"]
                out_path = os.path.join(self.mask_dir, _mask_name(path, used))
                Image.fromarray(mask).save(out_path)
                records.append({"image": path, "mask": out_path, "shape": list(mask.shape),
                                "foreground_fraction": float((mask > 0).mean())})
        report_skipped(skipped, len(records), "reclf_seg inference")
        result = {"checkpoint": os.path.abspath(ckpt), "threshold": self.threshold, **source, "n_samples": len(records),
                  "predictions": records, "n_skipped": len(skipped), "skipped": skipped}
        atomic_write_text(json.dumps(result, indent=2), self.output)
        logger.info("wrote %d mask(s) to %s", len(records), self.mask_dir)
        print(f"reclf_seg inference: {len(records)} image(s) segmented -> {self.mask_dir}", flush=True)
        return self.output
