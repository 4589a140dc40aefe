"""Segmentation inference (the MONAI Label pieces): radiographs of any size in, binary masks in
the input's own geometry out. The preprocessing is the training's (longest side resized, padded to
a square); :class:`RestoreGeometryd` crops the padding off and resizes the probabilities back to
the original size before thresholding."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, EnsureTyped, MapTransform, Resized, SpatialPadd
from monai.utils import convert_to_tensor

from ....data.io import read_radiograph
from ....utils import as_bool, atomic_write_text, autocast
from ...inference import input_items, report_skipped, tolerant_loader
from .evaluation import load_segmenter_weights, require_segmenter
from .training import THRESHOLD

logger = logging.getLogger("reclf")

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
        items, source = input_items(self.input_files, self.datalist, self.dataset_dir, self.eval_split, "segment")
        return [it["image"] for it in items], source

    @torch.no_grad()
    def run(self) -> str:
        from PIL import Image

        ckpt = require_segmenter(self.ckpt)
        load_segmenter_weights(self.network, ckpt)
        net = self.network.to(self.device).eval()
        paths, source = self._paths()
        # an unreadable file is skipped and listed in the JSON; the others are segmented
        loader = tolerant_loader([{"image": p} for p in paths], self.preprocessing, self.batch_size, self.num_workers)
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
