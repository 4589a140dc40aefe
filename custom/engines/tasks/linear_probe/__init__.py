"""Linear probing of the pretrained image tower (DESIGN §3 "linear classification").

The encoder is frozen, so every image's feature vector is computed once (batched, no
augmentation) for the training, validation and evaluation items; a linear head is then trained on
the cached features by an ignite :class:`HeadTrainer`, and the epoch with the best validation
metric is kept. ``label_fraction`` draws a stratified subset of the *labelled* training items
with a fixed seed (:func:`stratified_subset`); several ``label_seeds`` repeat the probe over
several draws and report mean and std.

Multi-label datalists (``labels`` = {name: 1 | 0 | -1}) train with BCE-with-logits where -1
(uncertain) entries are left out of the loss; multi-class datalists (``labels`` = int with a
top-level ``label_names``) train with cross-entropy.

Feature scaling: the head is trained on features standardised with the mean/std of the *whole
training split's* features (images only, no labels; never the validation or evaluation split);
the standardisation is folded into the saved linear layer, so ``models/model.pt`` is a plain
:class:`~custom.nets.classifier.ImageClassifier` (images in, logits out).

The head's loss and training workflow are :mod:`.head`; the features come from
:func:`custom.engines.encode.encode_image_features`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ....distributed import is_distributed, is_main_process
from ...checkpoints import write_checkpoint
from ....data import labels
from ....metrics import classification_metrics, nan_to_none
from ....nets.factory import unwrap
from ....data.textfiles import read_json
from ....utils import as_bool, as_int, as_optional_path, seed_everything, write_json
from ....data.labels import stratified_subset
from ...encode import encode_image_features
from ...encode import encode_image_features as extract_features  # noqa: F401 (the old name)
from .evaluation import ClassificationReport, LabelledImages  # noqa: F401 (evaluate.yaml's pieces)
from .head import METRIC_KEYS, BestValidationHead, HeadTrainer, fold_standardisation, probabilities
from .head import FeatureBatches, masked_bce_with_logits, probe_loss  # noqa: F401 (custom.linear_probe.*: old names)

logger = logging.getLogger("reclf")


# ---- labels ---------------------------------------------------------------------------------


def label_info(datalist: str, items: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Class names and task type of a datalist (:func:`custom.labels.task`; the labelled ``items``,
    or every split's).

    Returns:
        ``{"class_names": [...], "multi_label": bool}``.
    """
    content = read_json(datalist, "the datalist")
    if items is None:
        items = [it for split in ("training", "validation", "test") for it in content.get(split, [])
                 if isinstance(it, dict)]
    multi_label, names = labels.task(items, content.get("label_names"), datalist)
    return {"class_names": names, "multi_label": multi_label}


def label_targets(items: Sequence[dict[str, Any]], class_names: Sequence[str], multi_label: bool) -> np.ndarray:
    """(N, C) 1 / 0 / -1 (multi-label) or (N,) class indices (:func:`custom.labels.targets`)."""
    return labels.targets(items, class_names, multi_label)


def as_seed_list(value: Any) -> list[int]:
    """``label_seeds`` from a config/command line: ``[0, 1, 2]``, ``3``, ``"0,1,2"`` or ``"[0,1,2]"``."""
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        value = [v for v in text.replace(",", " ").split()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    try:
        seeds = [int(v) for v in value]
    except (TypeError, ValueError) as err:
        raise ValueError(f"label_seeds: expected a list of ints such as [0,1,2], got {value!r}") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"label_seeds: expected distinct ints, got {value!r}")
    return seeds


# ---- the bundle's workflows -----------------------------------------------------------------


class LinearProbe:
    """``train.yaml``: features once, then one probe per label seed; saves the first seed's
    classifier (``model.pt`` + ``model.json``) and every seed's evaluation metrics with mean/std.

    Args:
        network: the frozen :class:`ImageClassifier` (pretrained or random init); its head is
            replaced by the trained probe (folded standardisation) before saving.
        train_items, val_items, eval_items: labelled datalist items (from :func:`load_datalist`).
        class_names, multi_label: from :func:`label_info`.
        save_path: ``models/model.pt``; ``model.json`` is written beside it.
        output: the per-seed / mean / std metrics JSON (``eval/linear_probe.json``).
        pretrained_ckpt: the checkpoint the encoder came from (None = random init), recorded.
        label_fraction: share of the labelled training items used (:func:`stratified_subset`).
        label_seeds: one probe per seed (the subset draw and the mini-batch order).
        eval_split: recorded with the evaluation metrics. seed: the run seed.
        handlers: extra ignite/MONAI handlers attached to every seed's :class:`HeadTrainer`.
    """

    def __init__(
        self, network: nn.Module, train_items: list[dict[str, Any]], val_items: list[dict[str, Any]],
        eval_items: list[dict[str, Any]], class_names: Sequence[str], multi_label: bool, save_path: str,
        output: str, pretrained_ckpt: str | None = None, label_fraction: float = 1.0, label_seeds: Any = (0,),
        eval_split: str = "test", epochs: int = 100, batch_size: int = 64, lr: float = 1e-3,
        weight_decay: float = 1e-4, image_size: int = 64, device: str | torch.device = "cpu", amp: Any = False,
        seed: int = 0, num_workers: int = 0, encode_batch_size: int = 64, bad_images: str = "error",
        cache_dir: str | None = None, key_metric: str = "auto", handlers: Sequence[Any] = (),
    ) -> None:
        self.network = network
        self.items = {"training": list(train_items), "validation": list(val_items), "eval": list(eval_items)}
        self.class_names = list(class_names)
        self.multi_label = as_bool(multi_label, "multi_label")
        self.save_path = save_path
        self.output = output
        self.pretrained_ckpt = as_optional_path(pretrained_ckpt)
        self.label_fraction = float(label_fraction)
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction: expected a number in (0, 1] such as 0.01, 0.1, 1.0, got {label_fraction!r}")
        self.label_seeds = as_seed_list(label_seeds)
        self.eval_split = str(eval_split)
        self.epochs, self.batch_size = as_int(epochs, "epochs", 1), as_int(batch_size, "batch_size", 1)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.amp = as_bool(amp, "amp")
        self.seed = int(seed)
        self.encode = dict(batch_size=int(encode_batch_size), amp=self.amp, num_workers=int(num_workers),
                           bad_images=bad_images, cache_dir=cache_dir)
        self.key_metric = key_metric
        self.handlers = list(handlers or ())
        if not self.items["training"]:
            raise ValueError("linear probe: the training split has no labelled items")

    def _features(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        """(features (N, F), targets) per split; every distinct image is encoded once, also when
        the evaluation split overlaps the others (``eval_split: validation | all``)."""
        position: dict[str, int] = {}
        for items in self.items.values():
            for it in items:
                position.setdefault(it["image"], len(position))
        unique = [{"image": path} for path in position]
        if is_distributed():
            # every process must encode with the same weights (a random-init encoder included)
            for tensor in unwrap(self.network).state_dict().values():
                dist.broadcast(tensor, src=0)
        features, kept = encode_image_features(self.network, unique, self.image_size, self.device, **self.encode)
        row_of = {unique[k]["image"]: r for r, k in enumerate(kept.tolist())}
        logger.info("linear probe: %d image features of dimension %d", len(features), features.shape[1])
        out = {}
        for split, items in self.items.items():
            present = [it for it in items if it["image"] in row_of]  # all, unless bad_images=skip dropped some
            rows = torch.tensor([row_of[it["image"]] for it in present], dtype=torch.int64)
            out[split] = (features[rows], label_targets(present, self.class_names, self.multi_label))
        return out

    def run(self) -> dict[str, Any]:
        seed_everything(self.seed)
        features = self._features()  # once, for every seed
        if not is_main_process():  # the head is trained and saved by process 0 only
            return {}
        train_x, train_y = features["training"]
        # standardisation from the whole training split's images (no labels, never val/eval)
        mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)

        def standardised(x: torch.Tensor) -> torch.Tensor:
            return ((x - mean) / std).to(self.device)

        val_x, val_y = standardised(features["validation"][0]), features["validation"][1]
        eval_x, eval_y = features["eval"][0].to(self.device), features["eval"][1]
        net = unwrap(self.network)
        per_seed: list[dict[str, Any]] = []
        for k, label_seed in enumerate(self.label_seeds):
            subset = stratified_subset(train_y, self.label_fraction, label_seed)
            head = nn.Linear(train_x.shape[1], len(self.class_names)).to(self.device)
            nn.init.zeros_(head.weight)  # logistic regression's start: deterministic, no weight on dead channels
            nn.init.zeros_(head.bias)
            selection = BestValidationHead(val_x, val_y, self.class_names, self.multi_label, self.key_metric)
            trainer = HeadTrainer(
                head, standardised(train_x[subset]), torch.as_tensor(train_y[subset], device=self.device),
                self.multi_label, self.epochs, self.batch_size, self.lr, self.weight_decay,
                seed=self.seed * 1_000_003 + label_seed, handlers=[selection, *self.handlers],
            )
            trainer.run()
            weight, bias = fold_standardisation(head, mean.to(self.device), std.to(self.device))
            with torch.no_grad():
                scores = probabilities(eval_x @ weight.t() + bias, self.multi_label).cpu().numpy()
            metrics = classification_metrics(scores, eval_y, self.class_names, self.multi_label)
            record = {**metrics, "label_seed": label_seed, "n_train": int(len(subset)),
                      "best_epoch": int(selection.best_epoch),
                      f"val_{selection.key_metric}": selection.best_metrics.get(selection.key_metric)}
            per_seed.append(record)
            logger.info("linear probe seed %d (%d of %d training items, best epoch %d): %s", label_seed, len(subset),
                        len(train_y), selection.best_epoch,
                        ", ".join(f"{m} {metrics[m]:.3f}" for m in METRIC_KEYS))
            if k == 0:
                with torch.no_grad():
                    net.head.weight.copy_(weight)
                    net.head.bias.copy_(bias)
                self._save(record, len(train_y), selection.key_metric)
        summary = self._summary(per_seed)
        write_json(summary, self.output)
        logger.info("wrote %s", self.output)
        print(json.dumps({k: v for k, v in summary.items() if not k.startswith("seed")}, indent=2))
        return summary

    def _save(self, record: dict[str, Any], n_available: int, key_metric: str) -> None:
        net = unwrap(self.network)
        meta = {
            "task": "linear_probe",
            "class_names": self.class_names,
            "num_classes": len(self.class_names),
            "multi_label": self.multi_label,
            "image_encoder": net.encoder_name,
            "encoder_depth": net.encoder_depth,
            "image_size": self.image_size,
            "label_fraction": self.label_fraction,
            "label_seed": record["label_seed"],
            "label_seeds": self.label_seeds,
            "pretrained_ckpt": os.path.abspath(self.pretrained_ckpt) if self.pretrained_ckpt else None,
            "n_train": record["n_train"],
            "n_train_available": int(n_available),
            "seed": self.seed,
            "epochs": self.epochs,
            "best_epoch": record["best_epoch"],
            "selection_metric": f"val_{key_metric}",
            f"val_{key_metric}": record[f"val_{key_metric}"],
            "note": "model.pt = ImageClassifier state dict (frozen encoder + linear head, the training-split "
                    "feature standardisation folded into the head); with several label seeds, the first seed's",
        }
        write_checkpoint(self.save_path, net.state_dict(), nan_to_none(meta), "linear_probe")
        logger.info("saved %s (+ model.json)", self.save_path)

    def _summary(self, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
        """Flat JSON: the mean over seeds under the DESIGN keys, ``std/<key>`` (sample std; null
        for one seed), and ``seed<k>/<key>`` per seed."""
        keys = [*METRIC_KEYS, *(f"auroc/{c}" for c in self.class_names)]
        out: dict[str, Any] = {}
        for key in keys:
            values = np.array([r[key] for r in per_seed], dtype=np.float64)
            finite = values[np.isfinite(values)]
            out[key] = float(finite.mean()) if len(finite) else float("nan")
            out[f"std/{key}"] = float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
        out["n_samples"] = per_seed[0]["n_samples"]
        out["n_train"] = float(np.mean([r["n_train"] for r in per_seed]))
        out.update(eval_split=self.eval_split, checkpoint=os.path.abspath(self.save_path),
                   checkpoint_label_seed=self.label_seeds[0], label_fraction=self.label_fraction,
                   label_seeds=self.label_seeds,
                   pretrained_ckpt=os.path.abspath(self.pretrained_ckpt) if self.pretrained_ckpt else None,
                   image_encoder=unwrap(self.network).encoder_name, encoder_depth=unwrap(self.network).encoder_depth)
        for record in per_seed:
            prefix = f"seed{record['label_seed']}/"
            out.update({prefix + k: v for k, v in record.items() if k in keys or k in ("n_train", "best_epoch")
                        or k.startswith("val_")})
        return nan_to_none(out)
