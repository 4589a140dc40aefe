"""The reclf_cls ``evaluate.yaml`` pieces: labelled images for MONAI's ``SupervisedEvaluator`` and
the probe's metrics as an ignite metric.

``evaluate.yaml`` runs the saved :class:`~custom.nets.classifier.ImageClassifier` (rebuilt from
``model.json`` by :func:`custom.checkpoints.network_from_meta`, weights by ``CheckpointLoader``)
over :class:`LabelledImages`; :class:`ClassificationReport` turns the logits into the DESIGN §5
keys with the training report's own functions (:func:`.head.probabilities`,
:func:`custom.metrics.classification_metrics`), and :class:`custom.handlers.MetricsWriter` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric

from ....data import labels
from ....metrics import classification_metrics, nan_to_none
from ...encode import ImageItems
from .head import probabilities


class LabelledImages(ImageItems):
    """Decoded images of labelled datalist items with their targets in the probe's class order:
    ``{"image": (1, S, S), "label": (C,) 1 / 0 / -1 (multi-label) | () class index, "index"}``.

    Args:
        items: labelled items (``load_datalist(..., require=["image", "labels"], missing="skip")``).
        meta: the probe's ``model.json`` (``class_names``, ``multi_label``).
        datalist: the datalist file (its ``label_names`` must be the probe's classes, multi-class).
        split: named in the errors. image_size, bad_images, cache_dir: as :class:`ImageItems`.
    """

    def __init__(self, items: list[dict[str, Any]], meta: Mapping[str, Any], datalist: str, split: str,
                 image_size: int, bad_images: str = "error", cache_dir: str | None = None) -> None:
        names, multi_label = list(meta["class_names"]), bool(meta["multi_label"])
        if not multi_label:
            listed = labels.task(items, labels.read_label_names(datalist), datalist)[1]
            if listed != names:
                raise ValueError(f"datalist label_names {listed} differ from the probe's classes {names}")
        super().__init__(items, image_size, bad_images=bad_images, cache_dir=cache_dir)
        self.targets = labels.targets(self.items, names, multi_label)
        if multi_label and (self.targets == -1).all():
            raise ValueError(f"the {split!r} items of {datalist!r} label none of the probe's classes {names}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**super().__getitem__(index), "label": torch.as_tensor(self.targets[index])}


class ClassificationReport(Metric):
    """Ignite metric over an evaluator's ``(pred logits (B, C), label)`` output: the probe's
    ``acc``, ``macro_f1``, ``auroc/<class>``, ``auroc_mean``, ``n_samples`` as one dict (``key``
    unset; ignite puts its items into ``engine.state.metrics``, undefined values None) or the one
    value ``key`` (a scalar for an evaluator's ``key_val_metric``)."""

    def __init__(self, class_names: Sequence[str], multi_label: bool, key: str | None = None,
                 output_transform: Callable = lambda out: (out["pred"], out["label"]),
                 device: str | torch.device = "cpu") -> None:
        self.class_names, self.multi_label, self.key = list(class_names), bool(multi_label), key
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._targets: list[np.ndarray] = []

    def update(self, output: Sequence[torch.Tensor]) -> None:
        logits, label = output
        self._logits.append(torch.as_tensor(logits).detach().float().cpu())
        self._targets.append(torch.as_tensor(label).detach().cpu().numpy())

    def compute(self) -> float | dict[str, Any]:
        c = len(self.class_names)
        logits = torch.cat(self._logits) if self._logits else torch.zeros(0, c)
        empty = np.zeros((0, c) if self.multi_label else 0, dtype=np.int64)
        targets = np.concatenate(self._targets) if self._targets else empty
        report = classification_metrics(probabilities(logits, self.multi_label).numpy(), targets, self.class_names,
                                        self.multi_label)
        if self.key is None:
            return nan_to_none(report)
        return float(report[self.key])
