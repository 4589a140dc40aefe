"""Classification inference with the reclf_cls classifier (``configs/inference.yaml``).

The bundle's ``inference.yaml`` defines the pieces MONAI Label's bundle loader instantiates on its
own (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``); :class:`ClassifierPredictor`
runs exactly those pieces over image files or a datalist split, so the command line and MONAI Label
compute the same scores. Per image it writes ``{image, scores: {class: probability}, predicted}``.

Probabilities: multi-label classifiers apply a sigmoid per class (``predicted`` = the classes at or
above ``threshold``, 0.5 as in :func:`custom.metrics.classification_metrics`); multi-class ones a
softmax over classes (``predicted`` = the arg-max class).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...utils import as_bool, autocast, write_json
from ..checkpoints import (  # noqa: F401 (custom.classify.*: the old names, used by configs)
    TRAIN_FIRST, classifier_meta, load_classifier_weights, require_classifier,
)
from ..inference import IMAGE_EXTENSIONS, expand_input_files  # noqa: F401 (old names)
from ..inference import input_items, report_skipped, tolerant_loader

logger = logging.getLogger("reclf")



class ClassifierPredictor:
    """``inference.yaml``: class probabilities for image files or a datalist split.

    Args:
        network: the instantiated ``network_def`` (an :class:`~custom.nets.classifier.ImageClassifier`).
        preprocessing: dict transform on key ``image`` (path → (1, S, S) in [0, 1]).
        inferer: ``inferer(images (B, 1, S, S), network)`` → logits (B, C).
        postprocessing: dict transform on key ``pred`` turning one item's logits (C,) into probabilities.
        ckpt: the classifier ``model.pt`` (loaded strictly into ``network``).
        class_names: C names, in logit order. multi_label: sigmoid per class vs softmax.
        output: the predictions JSON file.
        input_files: image paths / a folder / a list; when empty, the ``eval_split`` items of
            ``datalist`` are classified (their ``labels`` are copied into the output).
        threshold: multi-label decision threshold on the probabilities.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor],
        postprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        ckpt: str,
        class_names: Sequence[str],
        multi_label: bool | str,
        output: str,
        input_files: Any = None,
        datalist: str | None = None,
        dataset_dir: str | None = None,
        eval_split: str = "test",
        batch_size: int = 16,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        amp: bool | str = False,
        threshold: float = 0.5,
    ) -> None:
        self.network, self.preprocessing = network, preprocessing
        self.inferer, self.postprocessing = inferer, postprocessing
        self.ckpt, self.class_names = ckpt, [str(c) for c in class_names]
        self.multi_label = as_bool(multi_label, "multi_label")
        self.output, self.input_files = output, input_files
        self.datalist, self.dataset_dir, self.eval_split = datalist, dataset_dir, eval_split
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.device, self.amp, self.threshold = torch.device(device), as_bool(amp, "amp"), float(threshold)

    def _items(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return input_items(self.input_files, self.datalist, self.dataset_dir, self.eval_split, "classify")

    def _record(self, item: dict[str, Any], probs: torch.Tensor) -> dict[str, Any]:
        scores = {name: float(p) for name, p in zip(self.class_names, probs.tolist())}
        if self.multi_label:
            predicted: Any = [n for n, p in scores.items() if p >= self.threshold]
        else:
            predicted = self.class_names[int(probs.argmax())]
        record = {"image": item["image"], "scores": scores, "predicted": predicted}
        if "labels" in item:
            record["labels"] = item["labels"]
        return record

    @torch.no_grad()
    def run(self) -> str:
        ckpt = require_classifier(self.ckpt)
        load_classifier_weights(self.network, ckpt)
        net = self.network.to(self.device).eval()
        items, source = self._items()
        # preprocessing sees {"image": path, "index": n}: exactly what MONAI Label hands it (plus an index);
        # an unreadable file is skipped and listed, the others are classified
        loader = tolerant_loader([{"image": it["image"], "index": n} for n, it in enumerate(items)], self.preprocessing,
                                 self.batch_size, self.num_workers)
        records: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        for ok, failed in loader:
            skipped += failed
            if not ok:
                continue
            batch = {"image": torch.stack([torch.as_tensor(d["image"], dtype=torch.float32) for d in ok]),
                     "index": torch.tensor([int(d["index"]) for d in ok])}
            images = batch["image"].to(self.device)
            with autocast(self.device, self.amp):
                logits = self.inferer(images, net)
            logits = logits.float().cpu()
            if logits.ndim != 2 or logits.shape[1] != len(self.class_names):
                raise ValueError(
                    f"network output {tuple(logits.shape)} does not match {len(self.class_names)} class_names"
                )
            # postprocessing is defined per item (MONAI Label applies it to one prediction (C,));
            # applying the same transform here keeps the two paths identical (cost: C numbers per item)
            for index, row in zip(batch["index"].tolist(), logits):
                probs = torch.as_tensor(self.postprocessing({"pred": row})["pred"]).float()
                records.append(self._record(items[index], probs))
        report_skipped(skipped, len(records), "reclf_cls inference")
        result = {
            "checkpoint": os.path.abspath(ckpt),
            "class_names": self.class_names,
            "multi_label": self.multi_label,
            "threshold": self.threshold if self.multi_label else None,
            **source,
            "n_samples": len(records),
            "predictions": records,
            "n_skipped": len(skipped),
            "skipped": skipped,
        }
        write_json(result, self.output)
        logger.info("wrote %d predictions to %s", len(records), self.output)
        print(f"reclf_cls inference: {len(records)} image(s) classified -> {self.output}"
              + (f"; {len(skipped)} unreadable file(s) skipped (listed there)" if skipped else ""), flush=True)
        return self.output
