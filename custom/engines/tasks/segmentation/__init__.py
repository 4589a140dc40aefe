"""Segmentation on the pretrained image encoder (DESIGN §3): the reclf_seg bundle's components.

- :mod:`custom.data.segmentation`: image/mask pairs (reading, geometry, datasets, loaders);
- :mod:`.training`: schedule, loss, per-image Dice/IoU metric, validation handlers, checkpoint;
- :mod:`.evaluation`: the trained ``model.pt`` as ``evaluate.yaml`` / ``inference.yaml`` load it;
- :mod:`.inference`: the MONAI Label pieces (masks in the input's own geometry).

The bundles name these as ``custom.segmentation.X`` (an alias of this package), so the names are
re-exported here.
"""

from ....data.segmentation import (
    MASK_KEYS,
    Binarized,
    LoadImageMaskd,
    SegDataset,
    augment_pairs,
    decode_pairs,
    mask_path,
    pair_transform,
    read_mask,
    seg_loader,
    with_masks,
)
from .evaluation import load_segmenter_weights, require_segmenter
from .inference import (
    LoadRadiographMetad,
    RecordResizedShaped,
    RestoreGeometryd,
    SegPredictor,
    inference_transform,
)
from .training import (
    THRESHOLD,
    TRAIN_FIRST,
    VAL_SHARE,
    SaveBestSegmentation,
    SegMetric,
    ValidateEvery,
    _summary,
    resolve_epochs,
    resolve_val_interval,
    save_segmenter,
    seg_loss,
)

__all__ = [
    "MASK_KEYS", "THRESHOLD", "TRAIN_FIRST", "VAL_SHARE", "Binarized", "LoadImageMaskd", "LoadRadiographMetad",
    "RecordResizedShaped", "RestoreGeometryd", "SaveBestSegmentation", "SegDataset", "SegMetric",
    "SegPredictor", "ValidateEvery", "augment_pairs", "decode_pairs", "inference_transform", "load_segmenter_weights",
    "mask_path", "pair_transform", "read_mask", "require_segmenter", "resolve_epochs",
    "resolve_val_interval", "save_segmenter", "seg_loader", "seg_loss", "with_masks",
]
