"""Segmentation training pieces the reclf_seg ``train.yaml`` names: the schedule (``epochs`` /
``val_interval`` from sample budgets), the loss, the per-image Dice/IoU metric, the validation
handlers and the checkpoint writer.

Metrics are per image on the ``image_size`` × ``image_size`` grid: the prediction is
``sigmoid(logits) >= 0.5``; Dice and IoU per image, averaged (an empty prediction on an empty mask
scores 1); ``dice_pos`` / ``iou_pos`` average the images whose mask is non-empty (null when there
is none).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.handlers import ValidationHandler

from ....distributed import is_main_process
from ....metrics import dice_iou, nan_to_none
from ....nets.factory import unwrap
from ....utils import as_choice, as_int

logger = logging.getLogger("reclf")

THRESHOLD = 0.5
TRAIN_FIRST = "run bundles/reclf_seg/configs/train.yaml first (or pass --ckpt PATH/model.pt)"
# validation images may cost at most this share of the training images between validations
# (`val_interval: auto`); an evaluation forward pass costs about a third of a training step
VAL_SHARE = 0.25

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
    undefined: no image, or no non-empty mask for the ``_pos`` kinds); ``summary``: all four with
    ``n_samples`` and ``n_pos`` as one dict (ignite puts its items into ``engine.state.metrics``;
    undefined values are None there)."""

    KINDS = ("dice", "dice_pos", "iou", "iou_pos", "summary")

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

    def compute(self) -> float | dict[str, Any]:
        if self._dice:
            summary = _summary(np.concatenate(self._dice), np.concatenate(self._iou), np.concatenate(self._pos))
        else:
            summary = _summary(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
        if self.kind == "summary":
            return summary
        return float("nan") if summary[self.kind] is None else float(summary[self.kind])


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
    from ...checkpoints import write_checkpoint

    net = unwrap(network)
    info = {"network": "SegUNet", "image_encoder": net.encoder_name, "encoder_depth": net.encoder_depth,
            "freeze_encoder": bool(net.freeze_encoder), "out_channels": int(net.head.out_channels),
            "threshold": THRESHOLD, **meta}
    write_checkpoint(path, net.state_dict(), info, "segmentation")


