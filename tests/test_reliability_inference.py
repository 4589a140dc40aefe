"""Reliability class 6: inference over a folder skips an unreadable image, reports it (JSON and
log) and writes the rest; a folder where nothing is readable is an error naming a file."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import SHARED_DATA, exception_text, run_bundle

CXR_IMAGES = os.path.join(SHARED_DATA, "cxr-notes", "images")


@pytest.fixture()
def folder_with_a_bad_image(tmp_path) -> str:
    folder = tmp_path / "studies"
    folder.mkdir()
    for name in sorted(os.listdir(CXR_IMAGES))[:3]:
        shutil.copy(os.path.join(CXR_IMAGES, name), folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (folder / "empty.dcm").write_bytes(b"")
    return str(folder)


def _cls_weights(tmp_path, pretrained, tiny_datalist) -> str:
    out = str(tmp_path / "cls")
    run_bundle(os.path.join(os.path.dirname(os.path.dirname(__file__)), "bundles", "reclf_cls", "configs", "train.yaml"),
               pretrained_ckpt=os.path.join(pretrained, "models", "model.pt"), dataset_dir=os.path.dirname(tiny_datalist),
               datalist=tiny_datalist, output_dir=out, epochs=1, image_size=64, device="cpu",
               bundle_root=os.path.join(os.path.dirname(os.path.dirname(__file__)), "bundles", "reclf_cls"))
    return out


def test_classification_skips_the_bad_file_and_writes_the_rest(pretrained, tiny_datalist, folder_with_a_bad_image,
                                                               tmp_path):
    repo = os.path.dirname(os.path.dirname(__file__))
    out = _cls_weights(tmp_path, pretrained, tiny_datalist)
    run_bundle(os.path.join(repo, "bundles", "reclf_cls", "configs", "inference.yaml"), output_dir=out,
               input_files=folder_with_a_bad_image, device="cpu", bundle_root=os.path.join(repo, "bundles", "reclf_cls"))
    with open(os.path.join(out, "eval", "predictions.json"), encoding="utf-8") as f:
        result = json.load(f)
    assert result["n_samples"] == 3 and len(result["predictions"]) == 3
    assert result["n_skipped"] == 2
    skipped = {os.path.basename(s["image"]): s["error"] for s in result["skipped"]}
    assert set(skipped) == {"broken.png", "empty.dcm"} and all(skipped.values())


def test_segmentation_skips_the_bad_file_and_an_all_bad_folder_is_an_error(folder_with_a_bad_image, tmp_path):
    repo = os.path.dirname(os.path.dirname(__file__))
    seg = os.path.join(repo, "bundles", "reclf_seg", "configs")
    out = str(tmp_path / "seg")
    demo = tmp_path / "demo"
    from custom.demo import generate_demo

    generate_demo(str(demo), n_train=24, n_val=8, n_test=8, image_size=64, seed=3)
    common = dict(output_dir=out, device="cpu", bundle_root=os.path.join(repo, "bundles", "reclf_seg"))
    run_bundle(os.path.join(seg, "train.yaml"), dataset_dir=str(demo), datalist=str(demo / "datalist.json"),
               epochs=1, image_size=64, pretrained_ckpt="", **common)
    run_bundle(os.path.join(seg, "inference.yaml"), input_files=folder_with_a_bad_image, **common)
    with open(os.path.join(out, "eval", "segmentations.json"), encoding="utf-8") as f:
        result = json.load(f)
    assert result["n_samples"] == 3 and result["n_skipped"] == 2
    assert len([n for n in os.listdir(os.path.join(out, "eval", "masks")) if n.endswith(".png")]) == 3
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(os.path.join(folder_with_a_bad_image, "broken.png"), only_bad / "broken.png")
    with pytest.raises(Exception) as info:
        run_bundle(os.path.join(seg, "inference.yaml"), input_files=str(only_bad), **common)
    assert "none of the 1 input file(s) could be read" in exception_text(info.value)
    assert "broken.png" in exception_text(info.value)
