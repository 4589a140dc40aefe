"""MONAI Label app serving the reclf bundles: ``reclf_seg`` (segmentation: infer and train from the
labels saved in the studies folder) and ``reclf_cls`` (classification: infer).

Start it with ``apps/monailabel/run.sh start --studies DIR`` (see README.md beside this file), or
by hand inside MONAI Label's own environment::

    monailabel start_server --app apps/monailabel --studies DIR --host 127.0.0.1 --port 8000 \\
        --conf models reclf_seg,reclf_cls --conf bundles_dir apps/monailabel/model

``--conf`` keys: ``models`` (comma-separated, default both), ``bundles_dir`` (the folder holding
``reclf_seg/`` and ``reclf_cls/`` bundle copies, default ``<app>/model``; never a zoo download),
``pretrained_ckpt`` (the reclf_pretrain checkpoint a first ``reclf_seg`` training starts from,
default ``<repo>/bundles/reclf_pretrain/models/model.pt``; missing = random init),
``skip_trainers`` (true: infer only), ``preload`` (true: load the networks at start).
No SAM2 task and no other downloading task is registered.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

APP_DIR = os.path.dirname(os.path.abspath(__file__))
if APP_DIR not in sys.path:  # MONAI Label puts the app folder on sys.path only while it imports this file
    sys.path.insert(0, APP_DIR)

import reclf_label as glue  # noqa: E402

REPO = glue.make_custom_importable(APP_DIR)

import monailabel  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: E402
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: E402
from monailabel.utils.others.generic import strtobool  # noqa: E402

logger = logging.getLogger(__name__)


class ReclfSegInferTask(BundleInferTask):
    """``reclf_seg`` inference: the bundle's own pipeline (its postprocessing already restores the
    input's size, so MONAI Label's ``Restored`` finds nothing to resize), weights loaded strictly,
    and the mask handed to MONAI Label's writer in the layout it expects."""

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, type=InferType.SEGMENTATION, load_strict=True)

    def post_transforms(self, data: Any = None) -> list[Any]:
        return list(super().post_transforms(data)) + glue.segmentation_writer_transforms()


class ReclfClsInferTask(BundleInferTask):
    """``reclf_cls`` inference: declared a classification (the folder name does not say so), without
    MONAI Label's ``Restored`` (it would resize the (C,) scores into an image), scores named after
    the classifier's own ``class_names``."""

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, type=InferType.CLASSIFICATION, add_post_restore=False, load_strict=True)
        if self.is_valid():
            self.labels = glue.class_labels(self.bundle_config)

    def post_transforms(self, data: Any = None) -> list[Any]:
        return list(super().post_transforms(data)) + glue.classification_writer_transforms()


class ReclfSegTrainTask(BundleTrainTask):
    """``reclf_seg`` training on the studies folder's final labels (PNG masks the size of their
    image, 0 / non-zero), with the bundle's own train.yaml; the best validation epoch is written to
    the bundle's ``models/model.pt``, which the infer task reloads on its next request."""

    def __init__(self, path: str, conf: dict[str, str], pretrained_ckpt: str) -> None:
        super().__init__(path, conf, load_strict=True)
        self.pretrained_ckpt = pretrained_ckpt

    def _partition_datalist(self, datalist, request, shuffle=False):
        train, val = super()._partition_datalist(datalist, request, shuffle=shuffle)
        return train, glue.validation_items(train, val)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.update(glue.seg_train_overrides(self.bundle_path, self.pretrained_ckpt))
        return overrides


class ReclfApp(MONAILabelApp):
    """The reclf bundles as MONAI Label models (bundle copies under ``bundles_dir``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles_dir = os.path.abspath(conf.get("bundles_dir") or os.path.join(app_dir, "model"))
        self.model_names = glue.model_names(conf.get("models"))
        self.pretrained_ckpt = conf.get("pretrained_ckpt") or os.path.join(
            REPO, "bundles", "reclf_pretrain", "models", "model.pt")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"reclf bundles - MONAI Label {monailabel.__version__}",
            description="RECLF chest X-ray segmentation (reclf_seg) and classification (reclf_cls) bundles",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name in self.model_names:
            path = glue.bundle_path(self.bundles_dir, name)
            kind = glue.BUNDLE_TASKS[name]
            task = ReclfSegInferTask(path, self.conf) if kind == "segmentation" else ReclfClsInferTask(path, self.conf)
            if not task.is_valid():
                logger.warning("%s: no %s yet, so no inference (train it first: bundles/%s/configs/train.yaml, "
                               "then copy its models/ here%s)", name, os.path.join(path, "models", "model.pt"), name,
                               ", or POST /train/reclf_seg" if name in glue.TRAINABLE else "")
                continue
            logger.info("+++ reclf: %s (%s) from %s, labels %s", name, kind, path, task.labels)
            infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name in self.model_names:
            if name not in glue.TRAINABLE:
                continue
            task = ReclfSegTrainTask(glue.bundle_path(self.bundles_dir, name), self.conf, self.pretrained_ckpt)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}
