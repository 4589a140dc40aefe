"""The reclf_seg bundle: Dice / IoU, image/mask geometry, the U-Net's pretrained (and frozen) encoder,
label fractions, evaluate.yaml, the MONAI Label inference contract, and short real runs (demo lesion
masks, cxr-notes lung masks)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA, read_json_strict, exception_text, LogRecords, monai_label_pieces, run_bundle

CONFIGS = os.path.join(REPO, "bundles", "reclf_seg", "configs")
TRAIN = os.path.join(CONFIGS, "train.yaml")
EVALUATE = os.path.join(CONFIGS, "evaluate.yaml")
INFERENCE = os.path.join(CONFIGS, "inference.yaml")
CXR_NOTES = os.path.join(SHARED_DATA, "cxr-notes")
DICOM = os.path.join(SHARED_DATA, "dicom", "siim_cr_chest_monochrome2_jpeg_baseline.dcm")
CPU = {"device": "cpu", "image_size": 64, "num_workers": 0, "amp": False, "batch_size": 16}
METRIC_KEYS = ("dice", "dice_pos", "iou", "n_samples", "eval_split", "checkpoint")


def _png(path, array: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(array).save(str(path))
    return str(path)


# ---- metrics, schedule, geometry (no training) -----------------------------------------------------


def test_dice_iou_against_hand_computed_values():
    from custom.metrics import dice_iou
    from custom.segmentation import SegMetric, _summary

    pred = np.zeros((5, 4, 4), dtype=bool)
    true = np.zeros((5, 4, 4), dtype=bool)
    pred[0, :2] = True                      # 8 px
    true[0, 1:3] = True                     # 8 px, 4 shared: Dice 8/16, IoU 4/12
    true[1, 0, :3] = True                   # nothing predicted: 0, 0
    pred[2, 3, 3] = True                    # a false positive on an empty mask: 0, 0
    pred[4] = true[4] = True                # perfect: 1, 1 ; image 3: empty on empty = 1, 1
    dice, iou = dice_iou(pred, true)
    np.testing.assert_allclose(dice, [0.5, 0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(iou, [1 / 3, 0.0, 0.0, 1.0, 1.0])
    positive = true.reshape(5, -1).any(1)
    summary = _summary(dice, iou, positive)
    assert summary["dice"] == pytest.approx(2.5 / 5) and summary["iou"] == pytest.approx((1 / 3 + 2) / 5)
    assert summary["dice_pos"] == pytest.approx(1.5 / 3) and summary["n_pos"] == 3 and summary["n_samples"] == 5
    assert _summary(dice[2:4], iou[2:4], positive[2:4])["dice_pos"] is None  # no non-empty mask: null, not NaN
    # the ignite metric on logits thresholds sigmoid at 0.5 and gives the same numbers
    metric = SegMetric("dice")
    logits = torch.where(torch.as_tensor(pred), 3.0, -3.0)[:, None]
    metric.update((logits[:3], torch.as_tensor(true, dtype=torch.float32)[:3, None]))
    metric.update((logits[3:], torch.as_tensor(true, dtype=torch.float32)[3:, None]))
    assert metric.compute() == pytest.approx(0.5)


def test_epochs_and_validation_schedule():
    from custom.segmentation import resolve_epochs, resolve_val_interval

    assert resolve_epochs("auto", 3000, 89) == 34 and resolve_epochs("auto", 3000, 1200) == 3
    assert resolve_epochs("3", 6000, 89) == 3  # a command-line string
    assert resolve_val_interval("auto", 17, 89) == 1 and resolve_val_interval("auto", 240, 120) == 8
    assert resolve_val_interval(2, 240, 12) == 2
    for bad in (0, "often"):
        with pytest.raises(ValueError):
            resolve_epochs(bad, 6000, 89)


def test_image_and_mask_share_one_geometry(tmp_path):
    """A non-square image whose bright block is its mask (given as a 0/1 PNG): after the resize and
    padding the mask still covers exactly the bright pixels, on the same (right, top) side, and the
    image equals the classifier's / pretraining's own transform."""
    from custom.data import image_transform
    from custom.segmentation import pair_transform, read_mask

    image = np.full((60, 100), 40, dtype=np.uint8)
    image[5:25, 70:95] = 250                             # top right, as displayed
    mask = np.zeros((60, 100), dtype=np.uint8)
    mask[5:25, 70:95] = 1                                # a 0/1 mask (reads as 0 and 1/255)
    image_path, mask_path = _png(tmp_path / "img.png", image), _png(tmp_path / "mask.png", mask)
    assert read_mask(mask_path).sum() == 20 * 25
    out = pair_transform(64)({"image": image_path, "label": mask_path})
    pixels, label = np.asarray(out["image"])[0], np.asarray(out["label"])[0]
    assert pixels.shape == label.shape == (64, 64) and set(np.unique(label)) == {0, 1}
    np.testing.assert_allclose(pixels, np.asarray(image_transform(64)({"image": image_path})["image"])[0], atol=1e-6)
    bright = pixels > 0.6
    assert (bright == (label == 1)).mean() > 0.99
    rows, cols = np.nonzero(label)
    assert rows.mean() < 32 and cols.mean() > 40          # still top right: no transposition, no flip
    # a mask that does not cover its image pixel for pixel is refused with both names
    _png(tmp_path / "small.png", mask[:50])
    with pytest.raises(Exception) as err:
        pair_transform(64)({"image": image_path, "label": str(tmp_path / "small.png")})
    assert "small.png" in exception_text(err.value) and "pixel for pixel" in exception_text(err.value)


def test_unet_shapes_and_boolean_override():
    from custom.nets.seg_unet import SegUNet

    torch.manual_seed(0)
    net = SegUNet(freeze_encoder="false")  # `--freeze_encoder false` arrives as a string
    assert not net.freeze_encoder and all(p.requires_grad for p in net.parameters())
    assert net(torch.rand(2, 1, 64, 96)).shape == (2, 1, 64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 1, 48, 64))


def test_encoder_weights_come_from_the_checkpoint_and_stay_fixed_when_frozen(pretrained):
    from custom.engines.checkpoints import build_segmenter
    from custom.nets.seg_unet import SegUNet
    from custom.segmentation import seg_loss

    ckpt = os.path.join(pretrained, "models", "model.pt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    tower = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    torch.manual_seed(0)
    random = SegUNet()
    for frozen in (True, False):
        net = build_segmenter(pretrained_ckpt=ckpt, freeze_encoder=frozen)
        mine = net.encoder.state_dict()
        assert set(mine) == set(tower)
        assert all(torch.equal(mine[k], v) for k, v in tower.items())
        assert not torch.equal(random.encoder.state_dict()["backbone.conv1.weight"], tower["backbone.conv1.weight"])
        before = {k: v.clone() for k, v in net.state_dict().items()}
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1.0e-2)
        net.train()
        torch.manual_seed(1)
        x, y = torch.rand(4, 1, 64, 64), (torch.rand(4, 1, 64, 64) > 0.7).float()
        for _ in range(2):
            optimizer.zero_grad()
            seg_loss("dice_ce")(net(x), y).backward()
            optimizer.step()
        after = net.state_dict()
        encoder_changed = [k for k in before if k.startswith("encoder.") and not torch.equal(before[k], after[k])]
        decoder_changed = [k for k in before if k.startswith("decoder.") and not torch.equal(before[k], after[k])]
        assert decoder_changed
        if frozen:  # weights and batch-norm statistics alike
            assert not encoder_changed, encoder_changed[:3]
        else:
            assert any(k.endswith("weight") for k in encoder_changed) and any("running_mean" in k for k in encoder_changed)


# ---- bundle runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fraction_run(tiny_datalist, pretrained, tmp_path_factory) -> dict:
    """train.yaml on the tiny demo datalist: pretrained encoder frozen (as the command line passes
    it), a quarter of the labels, 2 epochs at 64 px."""
    out = str(tmp_path_factory.mktemp("seg_fraction"))
    ckpt = os.path.join(pretrained, "models", "model.pt")
    run_bundle(TRAIN, dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist, output_dir=out,
               pretrained_ckpt=ckpt, freeze_encoder="true", label_fraction=0.25, epochs=2, **CPU)
    return {"out": out, "pretrained_ckpt": ckpt, "datalist": tiny_datalist}


def test_label_fraction_frozen_encoder_run_and_evaluate(fraction_run):
    from custom.data import load_datalist
    from custom.linear_probe import stratified_subset
    from custom.nets.seg_unet import SegUNet
    from custom.segmentation import SegDataset

    out = fraction_run["out"]
    meta = read_json_strict(os.path.join(out, "models", "model.json"))
    full = SegDataset(load_datalist(fraction_run["datalist"], "", "training", require=["image", "mask"]), 64)
    nonempty = full.masks.flatten(1).any(1).numpy().astype(np.int64)
    assert len(full) == 64 and 0 < nonempty.sum() < 64                       # demo: empty and non-empty masks
    assert meta["n_train"] == len(stratified_subset(nonempty, 0.25, 0)) == 16  # the subset trained on
    assert meta["n_train_available"] == 64 and meta["label_fraction"] == 0.25 and meta["freeze_encoder"] is True
    assert meta["pretrained_ckpt"] == os.path.abspath(fraction_run["pretrained_ckpt"])
    assert meta["image_size"] == 64 and meta["best_epoch"] in (1, 2) and 0.0 <= meta["val_dice"] <= 1.0
    # model.pt: a plain SegUNet state dict whose frozen encoder is still the pretrained tower
    state = torch.load(os.path.join(out, "models", "model.pt"), map_location="cpu", weights_only=True)
    net = SegUNet(meta["image_encoder"])
    net.load_state_dict(state, strict=True)
    pretrained = torch.load(fraction_run["pretrained_ckpt"], map_location="cpu", weights_only=True)
    tower = {k: v for k, v in pretrained.items() if k.startswith("image_encoder.")}
    assert all(torch.equal(state["encoder." + k[len("image_encoder."):]], v) for k, v in tower.items())
    # evaluate.yaml: the DESIGN §5 keys, the right sample count, the training record
    run_bundle(EVALUATE, dataset_dir="", datalist=fraction_run["datalist"], output_dir=out, device="cpu")
    metrics = read_json_strict(os.path.join(out, "eval", "metrics.json"))
    assert all(k in metrics for k in METRIC_KEYS)
    assert metrics["n_samples"] == 32 and metrics["eval_split"] == "test" and metrics["label_fraction"] == 0.25
    assert metrics["checkpoint"] == os.path.join(out, "models", "model.pt") and metrics["n_train"] == 16
    for key in ("dice", "dice_pos", "iou"):
        assert 0.0 <= metrics[key] <= 1.0
    # a changed image size is refused, naming the training size
    with pytest.raises(Exception) as err:
        run_bundle(EVALUATE, datalist=fraction_run["datalist"], output_dir=out, image_size=128, device="cpu")
    assert "--image_size 64" in exception_text(err.value)


def test_evaluate_overlay_equals_standalone_and_a_plain_reference(fraction_run, tmp_path):
    """evaluate.yaml alone, evaluate.yaml over train.yaml (the model-zoo overlay) and a plain loop
    (strict load, batched logits, dice_iou) give the same numbers."""
    from custom.data import load_datalist
    from custom.metrics import dice_iou
    from custom.nets.seg_unet import SegUNet
    from custom.segmentation import SegDataset

    out, datalist = fraction_run["out"], fraction_run["datalist"]
    alone, merged = str(tmp_path / "alone.json"), str(tmp_path / "merged.json")
    run_bundle(EVALUATE, dataset_dir="", datalist=datalist, output_dir=out, device="cpu", metrics_file=alone)
    run_bundle([TRAIN, EVALUATE], dataset_dir="", datalist=datalist, output_dir=out, device="cpu",
               metrics_file=merged)
    a, b = read_json_strict(alone), read_json_strict(merged)
    assert a == b
    meta = read_json_strict(os.path.join(out, "models", "model.json"))
    net = SegUNet(meta["image_encoder"]).eval()
    net.load_state_dict(torch.load(os.path.join(out, "models", "model.pt"), weights_only=True), strict=True)
    data = SegDataset(load_datalist(datalist, "", "test", require=["image"], missing="skip"), 64)
    with torch.no_grad():
        logits = torch.cat([net(data.images[i:i + 5]) for i in range(0, len(data), 5)])
    truth = data.masks.bool()
    dice, iou = dice_iou(torch.sigmoid(logits) >= 0.5, truth)
    positive = truth.flatten(1).any(1).numpy()
    assert a["n_samples"] == len(data) and a["n_pos"] == int(positive.sum())
    assert a["dice"] == pytest.approx(float(dice.mean()), abs=1e-6)
    assert a["iou"] == pytest.approx(float(iou.mean()), abs=1e-6)
    assert a["dice_pos"] == pytest.approx(float(dice[positive].mean()), abs=1e-6)


def test_evaluate_without_checkpoint_says_train_first(tmp_path, tiny_datalist):
    with pytest.raises(Exception) as err:
        run_bundle(EVALUATE, datalist=tiny_datalist, output_dir=str(tmp_path), device="cpu")
    assert "run bundles/reclf_seg/configs/train.yaml first" in exception_text(err.value)


@pytest.mark.slow
def test_demo_short_run_beats_all_background(demo_dir, tmp_path):
    """Random init (the pretrained checkpoint is missing: a warning), one epoch of 40 steps on the 320
    demo pairs at 64 px: the test Dice beats predicting background everywhere (which scores the
    share of empty masks), and lesions are found on the non-empty ones."""
    records = LogRecords()
    logging.getLogger("reclf").addHandler(records)
    out = str(tmp_path / "out")
    try:
        run_bundle(TRAIN, dataset_dir=demo_dir, datalist=os.path.join(demo_dir, "datalist.json"), output_dir=out,
                   pretrained_ckpt=str(tmp_path / "absent.pt"), epochs=1, **{**CPU, "batch_size": 8})
    finally:
        logging.getLogger("reclf").removeHandler(records)
    assert any("not found: starting from random init" in m for m in records.messages), records.messages
    assert read_json_strict(os.path.join(out, "models", "model.json"))["pretrained_ckpt"] is None
    run_bundle(EVALUATE, dataset_dir=demo_dir, datalist=os.path.join(demo_dir, "datalist.json"), output_dir=out,
               device="cpu")
    metrics = read_json_strict(os.path.join(out, "eval", "metrics.json"))
    background = 1.0 - metrics["n_pos"] / metrics["n_samples"]  # all-background: 1 on empty masks, 0 elsewhere
    assert metrics["n_samples"] == 96 and 0 < metrics["n_pos"] < 96
    assert metrics["dice"] > background + 0.05, (metrics, background)
    assert metrics["dice_pos"] > 0.1


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(CXR_NOTES), reason="../shared/data/cxr-notes not present")
def test_real_lung_masks_end_to_end(tmp_path):
    from custom.datasets.covid_notes import prepare_covid_notes

    datalist = str(tmp_path / "covid_notes.json")
    content = prepare_covid_notes(CXR_NOTES, datalist, quiet=True)
    n_train = sum(1 for it in content["training"] if it.get("mask"))
    n_test = sum(1 for it in content["test"] if it.get("mask"))
    assert 0 < n_train < len(content["training"])  # some items have no lung mask
    out = str(tmp_path / "out")
    records = LogRecords()
    logging.getLogger("reclf").addHandler(records)
    try:
        run_bundle(TRAIN, dataset_dir=CXR_NOTES, datalist=datalist, output_dir=out, pretrained_ckpt="",
                   epochs=2, **CPU)
    finally:
        logging.getLogger("reclf").removeHandler(records)
    skipped = len(content["training"]) - n_train
    assert any(f"{skipped} item(s) without image/mask skipped" in m for m in records.messages), records.messages
    meta = read_json_strict(os.path.join(out, "models", "model.json"))
    assert meta["n_train"] == n_train and meta["pretrained_ckpt"] is None
    run_bundle(EVALUATE, dataset_dir=CXR_NOTES, datalist=datalist, output_dir=out, device="cpu")
    metrics = read_json_strict(os.path.join(out, "eval", "metrics.json"))
    assert all(k in metrics for k in METRIC_KEYS) and metrics["n_samples"] == metrics["n_pos"] == n_test
    # lungs cover ~40 % of a radiograph: two epochs already overlap them (an empty prediction scores 0)
    assert metrics["dice"] > 0.3 and metrics["dice"] == metrics["dice_pos"]


# ---- inference: the MONAI Label contract -------------------------------------------------------------


def test_inference_monai_label_contract_and_masks(fraction_run, tmp_path):
    import shutil

    from monai.bundle import verify_net_in_out
    from monai.transforms import MapTransform
    from PIL import Image

    from custom.data import image_transform
    from custom.segmentation import pair_transform

    with open(os.path.join(CONFIGS, "metadata.json"), encoding="utf-8") as f:
        fmt = json.load(f)["network_data_format"]
    image_key, image_fmt = next(iter(fmt["inputs"].items()))
    pred_key, pred_fmt = next(iter(fmt["outputs"].items()))
    assert image_key == "image" and len(image_fmt["spatial_shape"]) == 2 and pred_key == "pred"
    assert {v for v in pred_fmt["channel_def"].values() if v != "background"} == {"foreground"}
    verify_net_in_out(net_id="network_def", meta_file=os.path.join(CONFIGS, "metadata.json"), config_file=INFERENCE,
                      device="cpu")

    root = str(tmp_path / "reclf_seg")  # a bundle folder as MONAI Label sees it
    shutil.copytree(os.path.join(fraction_run["out"], "models"), os.path.join(root, "models"))
    network, pre, inferer, post, parser = monai_label_pieces(INFERENCE, root)
    assert parser.get_parsed_content("image_size") == 64  # from model.json
    assert all(isinstance(t, MapTransform) and tuple(t.keys) == ("image",) for t in pre.transforms)

    # a non-square image with a mask, written where the lesion is on the image's right
    image = np.full((80, 120), 30, dtype=np.uint8)
    image[10:50, 75:110] = 240
    mask = (image > 100).astype(np.uint8) * 255
    image_path, mask_path = _png(tmp_path / "case.png", image), _png(tmp_path / "case_mask.png", mask)
    for path in (image_path, DICOM):
        data = pre({"image": path})  # MONAI Label hands the transforms {"image": <file path>}
        assert isinstance(data["image"], torch.Tensor) and tuple(data["image"].shape) == (1, 64, 64)
        np.testing.assert_allclose(data["image"].numpy(), np.asarray(image_transform(64)({"image": path})["image"]),
                                   atol=1e-6)
        with torch.no_grad():
            logits = inferer(data["image"][None], network)[0]
        restored = post({**data, "pred": logits})["pred"]
        assert tuple(restored.shape) == (1, *data["image_meta_dict"]["spatial_shape"])  # MONAI Label's Restored: no-op
        assert set(np.unique(np.asarray(restored))) <= {0.0, 1.0}
    # postprocessing restores the input geometry: the mask's own (padded, resized) grid as logits
    # comes back as the original mask
    data = pre({"image": image_path})
    grid = torch.as_tensor(np.asarray(pair_transform(64)({"image": image_path, "label": mask_path})["label"]))
    restored = np.asarray(post({**data, "pred": (grid.float() * 2 - 1) * 10})["pred"])[0]
    assert restored.shape == (80, 120)
    overlap = 2 * (restored.astype(bool) & (mask > 0)).sum() / (restored.sum() + (mask > 0).sum())
    assert overlap > 0.95

    # the command line: PNG masks of the input's size for a PNG and a DICOM
    run_bundle(INFERENCE, bundle_root=root, input_files=[image_path, DICOM], device="cpu")
    out = read_json_strict(os.path.join(root, "eval", "segmentations.json"))
    assert out["n_samples"] == 2 and out["source"] == "input_files" and out["threshold"] == 0.5
    for record, path in zip(out["predictions"], (image_path, DICOM)):
        with Image.open(record["mask"]) as written:
            from custom.io import read_radiograph

            assert written.size[::-1] == read_radiograph(path).shape == tuple(record["shape"])
            assert set(np.unique(np.asarray(written))) <= {0, 255}
        with torch.no_grad():  # the command line computes what the MONAI Label pieces compute
            data = pre({"image": path})
            expected = np.asarray(post({**data, "pred": inferer(data["image"][None], network)[0]})["pred"])[0]
        np.testing.assert_array_equal(np.asarray(Image.open(record["mask"])) > 0, expected > 0)


def test_inference_without_segmenter_says_train_first(tmp_path):
    with pytest.raises(Exception) as err:
        run_bundle(INFERENCE, bundle_root=str(tmp_path), input_files=[DICOM], device="cpu")
    assert "run bundles/reclf_seg/configs/train.yaml first" in exception_text(err.value)
