"""Segmentation evaluation: a reclf_seg ``model.pt`` (+ ``model.json``) on a datalist split, scored
per image on the ``image_size`` grid (the metric of :mod:`.training`)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from ....data.datasets import load_datalist
from ....data.segmentation import SegDataset
from ....metrics import dice_iou, nan_to_none
from ....nets.factory import unwrap
from ....nets.seg_unet import SegUNet
from ....utils import as_bool, atomic_write_text, autocast
from ...checkpoints import load_weights_strict, read_model_meta, require_checkpoint
from .training import THRESHOLD, TRAIN_FIRST, _summary

logger = logging.getLogger("reclf")

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


