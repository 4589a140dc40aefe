"""The reclf_cls linear probe: label-fraction subsets, masked multi-label loss, the demo target,
the saved classifier, evaluate.yaml, random-init fallback, and the real covid_notes set."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, SHARED_DATA, read_json_strict, LogRecords, run_bundle

CONFIGS = os.path.join(REPO, "bundles", "reclf_cls", "configs")
TRAIN = os.path.join(CONFIGS, "train.yaml")
EVALUATE = os.path.join(CONFIGS, "evaluate.yaml")
CXR_NOTES = os.path.join(SHARED_DATA, "cxr-notes")
CPU = {"device": "cpu", "image_size": 64, "num_workers": 0, "amp": False}


def _training_targets(datalist: str, dataset_dir: str):
    from custom.data import load_datalist
    from custom.linear_probe import label_info, label_targets

    items = load_datalist(datalist, dataset_dir, "training", require=["image", "labels"], missing="skip")
    info = label_info(datalist, items)
    return label_targets(items, info["class_names"], info["multi_label"]), info


# ---- pure parts ---------------------------------------------------------------------------------


def test_probe_defaults():
    with open(os.path.join(CONFIGS, "train.yaml"), encoding="utf-8") as f:
        train = yaml.safe_load(f)
    assert isinstance(train["lr"], float) and isinstance(train["weight_decay"], float)  # YAML 1.1: 1.0e-3
    assert train["label_fraction"] == 1.0 and train["label_seeds"] == [0]


def test_label_fraction_subsets_are_stratified_and_seeded(demo_dir):
    from custom.linear_probe import stratified_subset

    targets, info = _training_targets(os.path.join(demo_dir, "datalist.json"), demo_dir)
    assert info["multi_label"] and targets.shape == (320, 6)
    assert len(stratified_subset(targets, 1.0, 0)) == 320
    present = (targets == 1).any(0)
    for fraction in (0.1, 0.01):
        subset = stratified_subset(targets, fraction, 0)
        want = round(fraction * 320)
        assert want <= len(subset) <= want + targets.shape[1]  # + at most one forced positive per class
        assert ((targets[subset] == 1).any(0) == present).all()  # every class with a positive keeps one
        np.testing.assert_array_equal(subset, stratified_subset(targets, fraction, 0))  # same seed, same subset
        assert set(subset) != set(stratified_subset(targets, fraction, 1))  # another seed, another draw
    # 10% keeps the share of normal studies (the largest label combination) to within one item
    subset = stratified_subset(targets, 0.1, 3)
    normal = (targets == 0).all(1)
    assert abs(normal[subset].sum() - 0.1 * normal.sum()) < 1.0
    # multi-class: quotas 9 / 2.5 / 0.3 of 12 → 9 / 3 / 0 (largest remainder), the rare class then kept
    classes = np.repeat([0, 1, 2], [90, 25, 3])
    subset = stratified_subset(classes, 0.1, 0)
    np.testing.assert_array_equal(np.bincount(classes[subset], minlength=3), [9, 3, 1])
    with pytest.raises(ValueError, match="label_fraction"):
        stratified_subset(classes, 0.0, 0)
    with pytest.raises(ValueError, match="label_fraction"):
        stratified_subset(classes, 1.5, 0)


def test_masked_bce_ignores_uncertain_entries():
    from custom.linear_probe import masked_bce_with_logits

    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.2, 4.0]], requires_grad=True)
    targets = torch.tensor([[1, -1, 0], [0, 1, -1]])
    loss = masked_bce_with_logits(logits, targets)
    # by hand: -log σ(x) for positives, -log(1 - σ(x)) for negatives, mean over the 4 known entries
    x = logits.detach().double()
    manual = (math.log1p(math.exp(-x[0, 0])) + math.log1p(math.exp(x[0, 2]))
              + math.log1p(math.exp(x[1, 0])) + math.log1p(math.exp(-x[1, 1]))) / 4
    assert abs(loss.item() - manual) < 1e-6
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 2] == 0 and (logits.grad[targets >= 0] != 0).all()
    # the uncertain logits do not matter at all; treating -1 as a negative would change the loss
    moved = logits.detach().clone()
    moved[0, 1], moved[1, 2] = 10.0, -10.0
    assert abs(masked_bce_with_logits(moved, targets).item() - manual) < 1e-6
    unmasked = torch.nn.functional.binary_cross_entropy_with_logits(logits.detach(), targets.clamp(min=0).float())
    assert abs(unmasked.item() - manual) > 1e-3


# ---- the demo probe with the pretrained fixture's encoder --------------------------------------


@pytest.fixture(scope="module")
def demo_probe(pretrained_demo, demo_dir, tmp_path_factory) -> str:
    """output_dir of train.yaml on the full demo datalist (320 training pairs), all labels."""
    out = str(tmp_path_factory.mktemp("probe"))
    run_bundle(TRAIN, dataset_dir=demo_dir, datalist=os.path.join(demo_dir, "datalist.json"), output_dir=out,
               pretrained_ckpt=pretrained_demo, **CPU)
    return out


@pytest.mark.slow
def test_demo_probe_reaches_auroc_target(demo_probe, pretrained_demo):
    probe = read_json_strict(os.path.join(demo_probe, "eval", "linear_probe.json"))
    meta = read_json_strict(os.path.join(demo_probe, "models", "model.json"))
    assert probe["auroc_mean"] > 0.75, probe  # the target on the demo
    assert probe["n_samples"] == 96 and probe["eval_split"] == "test" and probe["label_seeds"] == [0]
    assert probe["n_train"] == meta["n_train"] == 320 and meta["label_fraction"] == 1.0 and meta["label_seed"] == 0
    assert meta["multi_label"] is True and meta["class_names"][0] == "opacity" and len(meta["class_names"]) == 6
    assert meta["pretrained_ckpt"] == pretrained_demo
    assert meta["image_encoder"] == "resnet18" and meta["image_size"] == 64
    assert 1 <= meta["best_epoch"] <= 100 and probe["std/auroc_mean"] is None  # one seed: std undefined


@pytest.mark.slow
def test_model_pt_loads_strictly_and_reproduces_logits(demo_probe, pretrained_demo, demo_dir):
    from custom.data import load_datalist
    from custom.downstream import ImageItems
    from custom.engines.checkpoints import build_classifier
    from custom.nets.classifier import ImageClassifier

    state = torch.load(os.path.join(demo_probe, "models", "model.pt"), map_location="cpu", weights_only=True)
    net = ImageClassifier(6, image_encoder="resnet18")
    net.load_state_dict(state, strict=True)
    net.eval()
    # the encoder stayed frozen: it equals the pretraining checkpoint's image tower
    encoder = build_classifier(6, pretrained_ckpt=pretrained_demo).eval()
    for key, value in encoder.encoder.state_dict().items():
        torch.testing.assert_close(state[f"encoder.{key}"], value, rtol=0, atol=0)
    items = load_datalist(os.path.join(demo_dir, "datalist.json"), demo_dir, "test")[:8]
    dataset = ImageItems(items, 64)
    images = torch.stack([dataset[i]["image"] for i in range(8)])
    with torch.no_grad():
        logits = net(images)
        expected = encoder.features(images) @ state["head.weight"].t() + state["head.bias"]
    assert logits.shape == (8, 6) and logits.std() > 0
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_evaluate_writes_design_keys_and_matches_training_report(demo_probe, demo_dir):
    run_bundle(EVALUATE, dataset_dir=demo_dir, datalist=os.path.join(demo_dir, "datalist.json"),
               output_dir=demo_probe, **CPU)
    metrics = read_json_strict(os.path.join(demo_probe, "eval", "metrics.json"))
    probe = read_json_strict(os.path.join(demo_probe, "eval", "linear_probe.json"))
    keys = ["acc", "macro_f1", "auroc_mean", *(f"auroc/{c}" for c in ("opacity", "effusion", "nodule",
                                                                      "pneumothorax", "atelectasis", "cardiomegaly"))]
    for key in [*keys, "n_samples", "eval_split", "checkpoint", "label_fraction", "label_seed", "n_train"]:
        assert key in metrics, key
    assert metrics["eval_split"] == "test" and metrics["n_samples"] == 96
    assert metrics["checkpoint"] == os.path.join(demo_probe, "models", "model.pt")
    assert metrics["label_fraction"] == 1.0 and metrics["label_seed"] == 0 and metrics["n_train"] == 320
    # the images through the saved classifier == the cached features through the trained head
    for key in keys:
        assert abs(metrics[key] - probe[f"seed0/{key}"]) < 1e-4, key
    # an override that does not match the probe's training resolution is refused, not silently used
    with pytest.raises(RuntimeError) as err:
        run_bundle(EVALUATE, dataset_dir=demo_dir, datalist=os.path.join(demo_dir, "datalist.json"),
                   output_dir=demo_probe, **{**CPU, "image_size": 32})
    assert "--image_size 64" in repr(err.value.__cause__ or err.value)


# ---- random init, label fractions, several seeds ------------------------------------------------


def test_missing_pretrained_warns_and_probes_label_fraction_with_seeds(tiny_datalist, tmp_path):
    from custom.linear_probe import stratified_subset

    with open(tiny_datalist, encoding="utf-8") as f:
        content = json.load(f)
    # an uncertain training entry (masked in the loss) and a class without positives in the test split
    content["training"][0]["labels"]["nodule"] = -1
    for item in content["test"]:
        item["labels"]["cardiomegaly"] = 0
    datalist = str(tmp_path / "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump(content, f)
    targets, _ = _training_targets(datalist, str(tmp_path))
    out = str(tmp_path / "out")
    records = LogRecords(logging.WARNING)
    logging.getLogger("reclf").addHandler(records)
    try:
        run_bundle(TRAIN, dataset_dir=str(tmp_path), datalist=datalist, output_dir=out,
                   pretrained_ckpt=str(tmp_path / "absent" / "model.pt"), label_fraction=0.1,
                   label_seeds="[0,1,2]", epochs=20, **CPU)
    finally:
        logging.getLogger("reclf").removeHandler(records)
    assert any("not found: starting from random init" in m for m in records.messages), records.messages
    probe = read_json_strict(os.path.join(out, "eval", "linear_probe.json"))
    meta = read_json_strict(os.path.join(out, "models", "model.json"))
    sizes = [len(stratified_subset(targets, 0.1, s)) for s in (0, 1, 2)]
    assert [probe[f"seed{s}/n_train"] for s in (0, 1, 2)] == sizes and max(sizes) < 64
    assert meta["pretrained_ckpt"] is None and meta["label_seed"] == 0 and meta["label_seeds"] == [0, 1, 2]
    assert meta["n_train"] == sizes[0] and meta["label_fraction"] == 0.1
    seed_aurocs = [probe[f"seed{s}/auroc_mean"] for s in (0, 1, 2)]
    assert abs(probe["auroc_mean"] - np.mean(seed_aurocs)) < 1e-9
    assert abs(probe["std/auroc_mean"] - np.std(seed_aurocs, ddof=1)) < 1e-9
    assert probe["auroc/cardiomegaly"] is None and probe["std/auroc/cardiomegaly"] is None
    # evaluate: the undefined AUROC is null, label fraction and seed come from model.json
    run_bundle(EVALUATE, dataset_dir=str(tmp_path), datalist=datalist, output_dir=out, **CPU)
    metrics = read_json_strict(os.path.join(out, "eval", "metrics.json"))
    assert metrics["auroc/cardiomegaly"] is None and metrics["n_samples"] == 32
    # evaluate.yaml over train.yaml (the model-zoo overlay form) writes the same file
    overlay = str(tmp_path / "overlay.json")
    run_bundle([TRAIN, EVALUATE], dataset_dir=str(tmp_path), datalist=datalist, output_dir=out,
               metrics_file=overlay, **CPU)
    assert read_json_strict(overlay) == metrics
    assert metrics["label_fraction"] == 0.1 and metrics["label_seed"] == 0 and metrics["label_seeds"] == [0, 1, 2]
    run_bundle(EVALUATE, dataset_dir=str(tmp_path), datalist=datalist, output_dir=out, eval_split="all", **CPU)
    metrics = read_json_strict(os.path.join(out, "eval", "metrics.json"))
    assert metrics["n_samples"] == 128 and metrics["eval_split"] == "all"
    assert metrics["auroc/cardiomegaly"] is not None  # training/validation items have cardiomegaly


# ---- real data ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(CXR_NOTES), reason="../shared/data/cxr-notes not present")
def test_covid_notes_multiclass_train_and_evaluate(pretrained, tmp_path):
    from custom.datasets.covid_notes import prepare_covid_notes

    datalist = str(tmp_path / "covid_notes.json")
    content = prepare_covid_notes(CXR_NOTES, datalist, quiet=True)
    n_test = sum(1 for it in content["test"] if it.get("labels") is not None)
    n_train = sum(1 for it in content["training"] if it.get("labels") is not None)
    out = str(tmp_path / "out")
    run_bundle(TRAIN, dataset_dir=CXR_NOTES, datalist=datalist, output_dir=out,
               pretrained_ckpt=os.path.join(pretrained, "models", "model.pt"), epochs=30, **CPU)
    meta = read_json_strict(os.path.join(out, "models", "model.json"))
    assert meta["multi_label"] is False and meta["class_names"] == ["COVID-19", "Other pneumonia", "No Finding"]
    assert meta["n_train"] == n_train  # unlabelled ('todo') rows are skipped
    run_bundle(EVALUATE, dataset_dir=CXR_NOTES, datalist=datalist, output_dir=out, **CPU)
    metrics = read_json_strict(os.path.join(out, "eval", "metrics.json"))
    probe = read_json_strict(os.path.join(out, "eval", "linear_probe.json"))
    assert metrics["n_samples"] == n_test and metrics["eval_split"] == "test"
    for key in ("acc", "macro_f1", "auroc_mean", "auroc/COVID-19", "auroc/Other pneumonia", "auroc/No Finding"):
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0, key
        if metrics[key] is not None:
            assert abs(metrics[key] - probe[f"seed0/{key}"]) < 1e-4, key
    assert metrics["acc"] is not None and metrics["auroc_mean"] is not None
