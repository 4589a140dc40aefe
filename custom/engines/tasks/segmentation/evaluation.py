"""The reclf_seg checkpoint as the evaluate and inference configs read it.

``evaluate.yaml`` itself is MONAI's ``SupervisedEvaluator`` over the validation pieces of
``train.yaml`` (:class:`.training.SegMetric` with ``kind: summary``), its network rebuilt from
``model.json`` (:func:`custom.checkpoints.network_from_meta`), ``CheckpointLoader`` and
:class:`custom.handlers.MetricsWriter`."""

from __future__ import annotations

from typing import Any

import torch

from ...checkpoints import load_weights_strict, require_checkpoint
from .training import TRAIN_FIRST


def require_segmenter(ckpt: Any) -> str:
    """The segmentation checkpoint path, or a clear error naming the command that makes it."""
    return require_checkpoint(ckpt, "segmentation checkpoint", TRAIN_FIRST)


def load_segmenter_weights(network: torch.nn.Module, ckpt: str) -> None:
    """Load a reclf_seg ``model.pt`` (a plain state dict) strictly into ``network``."""
    load_weights_strict(network, ckpt, "image_encoder comes from the model.json beside it")
