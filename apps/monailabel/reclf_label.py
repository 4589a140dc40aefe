"""The reclf side of the MONAI Label app: everything ``main.py`` adds to MONAI Label's bundle tasks
that does not need MONAI Label itself, so the default tests check it in the project's own
environment (MONAI Label 0.8.5 cannot be installed there: see ``requirements.txt``).

What MONAI Label's bundle tasks do with a bundle folder, and what this app adds:

- ``BundleInferTask`` parses ``configs/inference.yaml`` with ``bundle_root`` set to the folder,
  instantiates ``network_def``, loads ``models/model.pt`` into it (this app: strictly), hands
  ``{"image": <file path>, "image_path": <file path>, ...request}`` to the ``preprocessing``
  transforms one by one, runs ``inferer(image[None], network)[0]`` and the ``postprocessing``
  transforms on that one item, and writes the result. It takes the task type from the folder name
  (anything without "classification" is a segmentation) and appends its ``Restored`` transform
  (resize ``pred`` to ``image_meta_dict["spatial_shape"]``), which would resize a classifier's
  (C,) scores into an image: this app declares the types in :data:`BUNDLE_TASKS` and skips
  ``Restored`` for ``reclf_cls``.
- Its segmentation writer takes a 2-D ``pred`` in MONAI's reader layout (W, H) and transposes it
  when it writes the PNG; the bundle's postprocessing gives (1, H, W) in the displayed orientation,
  so :class:`MaskToWriterLayoutd` turns that into a (W, H) uint8 label map. Its classification
  writer reads ``pred.array`` (a MetaTensor) and names the scores after the task's labels, which
  this app takes from the classifier's own ``class_names`` (``models/model.json``), not from
  ``metadata.json``'s demo list.
- ``BundleTrainTask`` parses ``configs/train.yaml`` with ``bundle_root`` set, and runs it in-process
  with the overrides ``train#trainer#max_epochs``, ``train#dataset#data`` and
  ``validate#dataset#data`` (items ``{"image", "label"}`` from its datastore), ``device`` and
  ``train#handlers`` (a ``CheckpointLoader`` of ``models/model.pt`` put first when that file
  exists). :func:`seg_train_overrides` adds what the reclf bundle needs on top of that.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger("reclf.monailabel")

# the bundles this app serves and the MONAI Label task type of each (never guessed from the name)
BUNDLE_TASKS: dict[str, str] = {"reclf_seg": "segmentation", "reclf_cls": "classification"}
# the bundles MONAI Label may train from its labels (segmentation masks; it has no class labels)
TRAINABLE: tuple[str, ...] = ("reclf_seg",)
DEFAULT_MODELS = "reclf_seg,reclf_cls"


def repo_root(app_dir: str) -> str:
    """The reclf repository whose ``custom`` package the bundles name: ``$RECLF_REPO``, else the
    folder two levels above this app (``<repo>/apps/monailabel``)."""
    root = os.environ.get("RECLF_REPO") or os.path.dirname(os.path.dirname(os.path.abspath(app_dir)))
    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, "custom", "__init__.py")):
        raise FileNotFoundError(
            f"no reclf repository at {root!r} (custom/__init__.py is missing): set RECLF_REPO to the "
            "repository root, whose `custom` package the bundle configs import"
        )
    return root


def make_custom_importable(app_dir: str) -> str:
    """Put the repository root on ``sys.path`` for good (MONAI Label adds only the bundle folder,
    and only while it parses), so the bundles' ``custom.*`` targets import. Returns the root."""
    root = repo_root(app_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


def model_names(models: str | Sequence[str] | None) -> list[str]:
    """``--conf models reclf_seg,reclf_cls`` → the bundle names, each one this app knows."""
    if models is None or (isinstance(models, str) and not models.strip()):
        models = DEFAULT_MODELS
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    unknown = [n for n in names if n not in BUNDLE_TASKS]
    if unknown:
        raise ValueError(f"--conf models: unknown bundle(s) {unknown}; this app serves {sorted(BUNDLE_TASKS)}")
    return names


def bundle_path(bundles_dir: str, name: str) -> str:
    """``bundles_dir/name``, checked to be a bundle MONAI Label can read (no zoo download ever)."""
    path = os.path.abspath(os.path.join(bundles_dir, name))
    for needed in ("configs/inference.yaml", "configs/metadata.json"):
        if not os.path.isfile(os.path.join(path, needed)):
            raise FileNotFoundError(
                f"bundle {name!r}: {os.path.join(path, needed)} is missing. apps/monailabel/run.sh copies "
                f"bundles/{name} there (or pass --conf bundles_dir DIR holding {name}/configs and {name}/models)"
            )
    return path


def read_metadata(path: str) -> dict[str, Any]:
    """``configs/metadata.json`` of a bundle folder."""
    with open(os.path.join(path, "configs", "metadata.json"), encoding="utf-8") as f:
        return json.load(f)


def io_keys(metadata: dict[str, Any]) -> tuple[str, str]:
    """(image key, prediction key): the first input and output of ``network_data_format``, as MONAI
    Label reads them."""
    fmt = metadata["network_data_format"]
    return next(iter(fmt["inputs"])), next(iter(fmt["outputs"]))


def segmentation_labels(metadata: dict[str, Any]) -> dict[str, int]:
    """Label name → value of a segmentation bundle: the output's ``channel_def`` less background."""
    _, pred_key = io_keys(metadata)
    channel_def = metadata["network_data_format"]["outputs"][pred_key].get("channel_def", {})
    return {str(v).lower(): int(k) for k, v in channel_def.items() if str(v).lower() != "background"}


def class_labels(parser: Any) -> dict[str, int]:
    """Class name → score index of a ``reclf_cls`` inference config (its ``class_names``, read from
    ``models/model.json`` beside the weights, so a classifier trained on another datalist reports
    its own classes)."""
    names = list(parser.get_parsed_content("class_names"))
    if not names or len(set(names)) != len(names):
        raise ValueError(f"reclf_cls: class_names must be distinct and non-empty, got {names}")
    return {str(n): i for i, n in enumerate(names)}


def existing_image_size(bundle: str) -> int | None:
    """``image_size`` of the weights already in ``bundle/models`` (their ``model.json``), if any."""
    meta = os.path.join(bundle, "models", "model.json")
    if not os.path.isfile(os.path.join(bundle, "models", "model.pt")) or not os.path.isfile(meta):
        return None
    with open(meta, encoding="utf-8") as f:
        size = json.load(f).get("image_size")
    return int(size) if size is not None else None


def seg_train_overrides(bundle: str, pretrained_ckpt: str = "", image_size: int | None = None) -> dict[str, Any]:
    """What the app adds to MONAI Label's train overrides for ``reclf_seg``.

    - ``datalist: ""``: the items come from MONAI Label; the config's default demo datalist would
      otherwise make ``initialize`` generate the demo data in the server's working directory.
    - ``pretrained_ckpt``: an absolute path (the config's default is relative to the repository
      root); "" or a missing file trains from random init (the bundle warns). A ``models/model.pt``
      already there is loaded over it by MONAI Label's ``CheckpointLoader``.
    - ``image_size``: the size of the weights already there (their model.json), so the retrained
      model matches the geometry the running infer task parsed; else the config's default.
    """
    overrides: dict[str, Any] = {"datalist": "", "pretrained_ckpt": os.path.abspath(pretrained_ckpt) if pretrained_ckpt else ""}
    size = image_size if image_size is not None else existing_image_size(bundle)
    if size is not None:
        if int(size) % 32:
            raise ValueError(f"reclf_seg: image_size must be a multiple of 32, got {size}")
        overrides["image_size"] = int(size)
    return overrides


def validation_items(train: list[dict[str, Any]], val: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """MONAI Label's validation split, or the training items when it is empty (``val_split`` 0, -1
    or too few labels): the bundle keeps the checkpoint of its best validation epoch and would save
    nothing without one."""
    if not train:
        raise ValueError("reclf_seg training: the datastore has no labelled images (save a label first)")
    if val:
        return list(val)
    logger.warning("reclf_seg training: no validation split; validating on the %d training item(s)", len(train))
    return list(train)


def _mask_to_writer_layout(pred: Any) -> np.ndarray:
    values = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
    if values.ndim == 3:
        if values.shape[0] != 1:
            raise ValueError(f"reclf_seg: expected one mask channel, got pred of shape {values.shape}")
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"reclf_seg: expected a (1, H, W) or (H, W) mask, got pred of shape {values.shape}")
    labels = np.unique(values)
    if not set(labels.tolist()) <= {0.0, 1.0}:
        raise ValueError(f"reclf_seg: postprocessing must threshold the mask to 0 / 1, got values {labels[:5]}")
    return np.ascontiguousarray(values.T.astype(np.uint8))


class MaskToWriterLayoutd:
    """``pred`` (1, H, W) {0, 1}, rows as displayed → (W, H) uint8 label map: MONAI Label's
    writer transposes 2-D results back (MONAI's readers hand it (W, H) arrays), so the PNG it
    writes has the input's rows and columns. Runs after MONAI Label's ``Restored``, which leaves a
    (1, H, W) mask of the original size as it is."""

    def __init__(self, keys: Sequence[str] = ("pred",)) -> None:
        self.keys = tuple(keys)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.keys:
            out[key] = _mask_to_writer_layout(out[key])
        return out


def segmentation_writer_transforms() -> list[Any]:
    """Post transforms the app appends after MONAI Label's own for ``reclf_seg``."""
    return [MaskToWriterLayoutd(("pred",))]


def classification_writer_transforms() -> list[Any]:
    """Post transforms the app appends for ``reclf_cls`` (no ``Restored``): the scores as a
    float32 MetaTensor (C,), which MONAI Label's classification writer reads."""
    import torch
    from monai.transforms import EnsureTyped

    return [EnsureTyped(keys="pred", data_type="tensor", dtype=torch.float32, track_meta=True)]
