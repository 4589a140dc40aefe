"""The MONAI Label contract of reclf_seg and reclf_cls, checked without MONAI Label (it cannot be
installed beside this project): each bundle is loaded and run the way MONAI Label 0.8.5's
``BundleInferTask`` / ``BundleTrainTask`` do it, plus what ``apps/monailabel/main.py`` adds
(``apps/monailabel/reclf_label.py``). The real server is the opt-in ``tests/optin/test_monailabel_server.py``.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA, TINY, run_bundle

APP_DIR = os.path.join(REPO, "apps", "monailabel")
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)

import reclf_label as glue  # noqa: E402

CXR_NOTES = os.path.join(SHARED_DATA, "cxr-notes")
BUNDLES = os.path.join(REPO, "bundles")


def _lung_mask_items(n: int) -> list[dict[str, str]]:
    """The first ``n`` cxr-notes rows with a lung mask, as MONAI Label's datastore lists labelled
    images: ``{"image": path, "label": path}``."""
    with open(os.path.join(CXR_NOTES, "metadata.csv"), encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["lung_mask"]]
    return [{"image": os.path.join(CXR_NOTES, r["image"]), "label": os.path.join(CXR_NOTES, r["lung_mask"])}
            for r in rows[:n]]


def _bundle_copy(tmp_path, name: str, folder: str | None = None) -> str:
    """``bundles/name`` as the app's model folder holds it, in ``tmp_path/folder`` (configs only;
    the weights come from the test)."""
    dst = str(tmp_path / (folder or name))
    shutil.copytree(os.path.join(BUNDLES, name, "configs"), os.path.join(dst, "configs"))
    os.makedirs(os.path.join(dst, "models"))
    return dst


def _parser(bundle: str, config: str):
    """``_load_bundle_config`` of MONAI Label's bundle tasks: read the config, set ``bundle_root``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", config))
    parser.config.update({"bundle_root": bundle})
    return parser


def _train_like_monai_label(bundle: str, items: list[dict[str, str]], max_epochs: int, image_size: int | None) -> dict:
    """``BundleTrainTask.__call__`` (single process) with the app's ``_partition_datalist`` and
    ``_update_overrides``; returns the overrides it ran with."""
    from monai.bundle import run
    from monai.data import partition_dataset

    parser = _parser(bundle, "train.yaml")
    # every key MONAI Label (and the app) overrides must exist: a renamed one would be added beside
    # the config's own and silently ignored (e.g. epochs=auto instead of max_epochs)
    for key in ("bundle_root", "device", "train#trainer#max_epochs", "train#dataset#data", "train#handlers",
                "validate#dataset#data", "network", "datalist", "pretrained_ckpt", "image_size"):
        assert parser.get(key, KeyError) is not KeyError, f"train.yaml has no {key!r}"
    handlers = parser.get("train#handlers", [])
    assert isinstance(handlers, list) and handlers, "MONAI Label edits the list at train#handlers"
    model_pt = os.path.join(bundle, "models", "model.pt")
    if os.path.exists(model_pt):  # request "pretrained": true (its default) puts a CheckpointLoader first
        handlers.insert(0, {"_target_": "CheckpointLoader", "load_path": model_pt,
                            "load_dict": {"model": "$@network"}, "strict": True})
    train, val = partition_dataset(items, ratios=[0.8, 0.2], shuffle=False)  # request val_split 0.2
    overrides = {
        "bundle_root": bundle,
        "train#trainer#max_epochs": max_epochs,
        "train#dataset#data": train,
        "device": "cpu",
        "train#handlers": handlers,
        "validate#dataset#data": glue.validation_items(train, val),
    }
    overrides.update(glue.seg_train_overrides(bundle, pretrained_ckpt="", image_size=image_size))
    run(run_id="run", init_id=None, final_id=None, meta_file=os.path.join(bundle, "configs", "metadata.json"),
        config_file=os.path.join(bundle, "configs", "train.yaml"), **overrides)
    return overrides


def _infer_like_monai_label(bundle: str, image_path: str, kind: str) -> tuple[dict, dict, torch.Tensor]:
    """``BundleInferTask`` + ``BasicInferTask.__call__`` up to the writer: returns
    (post-processed data, labels, raw network output of the one item)."""
    from monai.transforms import Compose, LoadImaged, SaveImaged

    metadata = glue.read_metadata(bundle)
    image_key, pred_key = glue.io_keys(metadata)
    assert (image_key, pred_key) == ("image", "pred")  # BasicInferTask's input_key / output_label_key
    assert len(metadata["network_data_format"]["inputs"][image_key]["spatial_shape"]) == 2  # dimension 2

    parser = _parser(bundle, "inference.yaml")
    network = parser.get_parsed_content("network_def", instantiate=True)
    checkpoint = torch.load(os.path.join(bundle, "models", "model.pt"), map_location="cpu")
    network = copy.deepcopy(network)
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)  # the app: load_strict=True
    network.eval()
    labels = glue.segmentation_labels(metadata) if kind == "segmentation" else glue.class_labels(parser)

    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    pre = list(pre.transforms) if isinstance(pre, Compose) else pre
    assert not any(isinstance(t, LoadImaged) for t in pre)  # MONAI Label's LoadImaged patch never applies
    data = {"image": image_path, "image_path": image_path, "model": os.path.basename(bundle), "device": "cpu"}
    for t in pre:
        data = t(data)
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    inputs = data[image_key]
    inputs = inputs if torch.is_tensor(inputs) else torch.from_numpy(inputs)
    with torch.no_grad():
        raw = inferer(inputs[None], network)[0]
    data[pred_key] = raw

    post = parser.get_parsed_content("postprocessing", instantiate=True)
    post = [t for t in (list(post.transforms) if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)]
    for t in post:
        data = t(data)
    if kind == "segmentation":
        # MONAI Label's Restored: resizes pred to image_meta_dict["spatial_shape"] when they differ;
        # the bundle's postprocessing must already have restored the size, leaving it nothing to do
        shape = tuple(int(v) for v in np.asarray(data["image_meta_dict"]["spatial_shape"]))
        assert tuple(data[pred_key].shape) == (1, *shape)
        extra = glue.segmentation_writer_transforms()
    else:
        extra = glue.classification_writer_transforms()  # and no Restored
    for t in extra:
        data = t(data)
    return data, labels, raw


def test_app_knows_its_bundles_and_refuses_bad_configuration(tmp_path):
    assert glue.model_names(None) == glue.model_names("") == ["reclf_seg", "reclf_cls"]
    assert glue.model_names(" reclf_cls ") == ["reclf_cls"]
    with pytest.raises(ValueError, match="unknown bundle"):
        glue.model_names("reclf_seg,spleen_ct_segmentation")  # never a zoo download
    # MONAI Label guesses "segmentation" for any folder name without "classification": declared here
    assert glue.BUNDLE_TASKS == {"reclf_seg": "segmentation", "reclf_cls": "classification"}
    assert glue.TRAINABLE == ("reclf_seg",)
    for name in glue.BUNDLE_TASKS:
        assert glue.bundle_path(BUNDLES, name) == os.path.join(BUNDLES, name)
        assert glue.io_keys(glue.read_metadata(os.path.join(BUNDLES, name))) == ("image", "pred")
    with pytest.raises(FileNotFoundError, match="run.sh copies bundles/reclf_seg"):
        glue.bundle_path(str(tmp_path), "reclf_seg")
    assert glue.repo_root(APP_DIR) == REPO
    with pytest.raises(FileNotFoundError, match="RECLF_REPO"):
        glue.repo_root(str(tmp_path / "a" / "b"))
    with pytest.raises(ValueError, match="no labelled images"):
        glue.validation_items([], [])
    items = [{"image": "a.png", "label": "a_mask.png"}]
    assert glue.validation_items(items, []) == items and glue.validation_items(items, None) == items
    with pytest.raises(ValueError, match="multiple of 32"):
        glue.seg_train_overrides(str(tmp_path), image_size=100)


def test_seg_train_then_infer_the_monai_label_way_on_real_lung_masks(tmp_path, monkeypatch):
    from PIL import Image

    bundle = _bundle_copy(tmp_path, "reclf_seg")
    items = _lung_mask_items(5)
    cwd = tmp_path / "server_cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the server's working directory: the bundle must write nothing there

    # first training: no weights yet, so no CheckpointLoader; 4 training / 1 validation image
    overrides = _train_like_monai_label(bundle, items, max_epochs=1, image_size=64)
    assert overrides["datalist"] == "" and overrides["image_size"] == 64
    assert "CheckpointLoader" not in json.dumps(overrides["train#handlers"])
    assert os.listdir(cwd) == []  # no demo data generated by `initialize`
    with open(os.path.join(bundle, "models", "model.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["image_size"] == 64 and meta["n_train"] == 4 and meta["n_val"] == 1 and meta["epochs"] == 1
    first = torch.load(os.path.join(bundle, "models", "model.pt"), weights_only=True)

    # retraining from the labels: MONAI Label loads models/model.pt strictly first; the app keeps its size
    assert glue.existing_image_size(bundle) == 64
    overrides = _train_like_monai_label(bundle, items, max_epochs=1, image_size=None)
    assert overrides["image_size"] == 64
    assert overrides["train#handlers"][0]["_target_"] == "CheckpointLoader"
    second = torch.load(os.path.join(bundle, "models", "model.pt"), weights_only=True)
    assert first.keys() == second.keys()

    # inference on a real, non-square radiograph (a transposed mask would change the shape)
    image_path = next(it["image"] for it in _lung_mask_items(40)
                      if len(set(Image.open(it["image"]).size)) == 2)
    with Image.open(image_path) as im:
        width, height = im.size
    data, labels, raw = _infer_like_monai_label(bundle, image_path, "segmentation")
    assert labels == {"foreground": 1}
    assert tuple(raw.shape) == (1, 64, 64)
    written = data["pred"]  # what MONAI Label's writer gets: (W, H) uint8, transposed back when written
    assert isinstance(written, np.ndarray) and written.dtype == np.uint8 and written.shape == (width, height)
    assert set(np.unique(written)) <= {0, 1}
    # the written PNG (rows x columns = height x width) is the bundle's own mask for this image
    from custom.segmentation import RestoreGeometryd

    probs = torch.sigmoid(raw)
    restored = RestoreGeometryd(("pred",))({"pred": probs, "image_meta_dict": data["image_meta_dict"]})["pred"]
    np.testing.assert_array_equal(written.T, (np.asarray(restored[0]) >= 0.5).astype(np.uint8))

    # a postprocessing that forgot to threshold is refused, not written as an all-zero uint8 map
    with pytest.raises(ValueError, match="threshold"):
        glue.MaskToWriterLayoutd(("pred",))({"pred": probs})


def _demo_classifier(tiny_datalist, out: str) -> None:
    """reclf_cls weights from the bundle's own train.yaml: 1 epoch on the tiny demo datalist, 64 px."""
    run_bundle(os.path.join(BUNDLES, "reclf_cls", "configs", "train.yaml"),
               dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist, output_dir=out,
               pretrained_ckpt="", epochs=1, **TINY)


def test_cls_infer_the_monai_label_way_on_a_real_png(tiny_datalist, tmp_path):
    from monai.data import MetaTensor

    from custom.demo import FINDINGS
    from custom.nets.classifier import ImageClassifier

    bundle = _bundle_copy(tmp_path, "reclf_cls")
    _demo_classifier(tiny_datalist, bundle)
    image_path = _lung_mask_items(1)[0]["image"]
    data, labels, raw = _infer_like_monai_label(bundle, image_path, "classification")
    assert labels == {name: i for i, name in enumerate(FINDINGS)}
    scores = data["pred"]
    assert isinstance(scores, MetaTensor) and scores.dtype == torch.float32 and tuple(scores.shape) == (len(FINDINGS),)
    torch.testing.assert_close(scores.as_tensor(), torch.sigmoid(raw))  # multi-label: a sigmoid per class
    # MONAI Label's classification writer: one {idx, label, score} per class, named by the task's labels
    names = {i: n for n, i in labels.items()}
    prediction = [{"idx": i, "label": names[i], "score": float(s)} for i, s in enumerate(scores.array)]
    assert [p["label"] for p in prediction] == list(FINDINGS)
    assert all(0.0 <= p["score"] <= 1.0 for p in prediction)

    # a classifier trained on another datalist names its own classes (model.json), not metadata.json's
    other = _bundle_copy(tmp_path, "reclf_cls", "covid")
    covid = ["COVID-19", "Pneumonia", "No Finding"]
    net = ImageClassifier(num_classes=3, image_encoder="resnet18", pretrained_ckpt="")
    torch.save(net.state_dict(), os.path.join(other, "models", "model.pt"))
    with open(os.path.join(other, "models", "model.json"), "w", encoding="utf-8") as f:
        json.dump({"class_names": covid, "multi_label": False, "image_encoder": "resnet18", "image_size": 64}, f)
    data, labels, _ = _infer_like_monai_label(other, image_path, "classification")
    assert labels == {"COVID-19": 0, "Pneumonia": 1, "No Finding": 2}
    assert tuple(data["pred"].shape) == (3,) and abs(float(data["pred"].sum()) - 1.0) < 1e-5  # softmax
