"""Tests of the synthetic demo data (custom/data/demo/): determinism, splits, laterality, wording."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from custom import demo

SIZES = {"n_train": 40, "n_val": 20, "n_test": 20, "image_size": 64}
SPLITS = ("training", "validation", "test")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    path = demo.generate_demo(str(root), seed=3, **SIZES)
    with open(path) as fh:
        return root, json.load(fh)


def _items(datalist: dict) -> list[dict]:
    return [item for split in SPLITS for item in datalist[split]]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _has_opposite_pair(item: dict) -> bool:
    sides = [f["side"] for f in item["findings"]]
    return "left" in sides and "right" in sides


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    small = {"n_train": 12, "n_val": 6, "n_test": 6, "image_size": 64}
    demo.generate_demo(str(a), seed=1, **small)
    demo.generate_demo(str(b), seed=1, **small)
    demo.generate_demo(str(c), seed=2, **small)
    snap_a, snap_b, snap_c = _snapshot(a), _snapshot(b), _snapshot(c)
    assert snap_a == snap_b
    assert not any(name.endswith(".tmp") for name in snap_a)
    assert snap_a["datalist.json"] != snap_c["datalist.json"]
    common = set(snap_a) & set(snap_c) - {"datalist.json"}
    images_a = [v for k, v in snap_a.items() if k.startswith("images/")]
    images_c = [v for k, v in snap_c.items() if k.startswith("images/")]
    assert images_a != images_c
    assert all(snap_a[k] != snap_c[k] for k in common if k.startswith("images/"))


def test_layout_split_sizes_and_patients(small_demo: tuple[Path, dict]) -> None:
    root, datalist = small_demo
    assert [len(datalist[s]) for s in SPLITS] == [SIZES["n_train"], SIZES["n_val"], SIZES["n_test"]]
    assert datalist["label_names"] == list(demo.FINDINGS)
    patients = {s: {item["patient_id"] for item in datalist[s]} for s in SPLITS}
    assert not patients["training"] & patients["validation"]
    assert not patients["training"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    items = _items(datalist)
    assert len({item["image"] for item in items}) == len(items)
    assert len({item["patient_id"] for item in items}) < len(items)  # some patients have 2 studies
    for item in items:
        for key in ("image", "mask"):
            with Image.open(root / item[key]) as im:
                assert im.mode == "L" and im.size == (SIZES["image_size"], SIZES["image_size"])
        assert item["view"] == "PA" and item["report"].isascii()
        assert set(np.unique(np.asarray(Image.open(root / item["mask"])))) <= {0, 255}


def test_study_mix(small_demo: tuple[Path, dict]) -> None:
    _, datalist = small_demo
    for split in SPLITS:
        items = datalist[split]
        assert sum(map(_has_opposite_pair, items)) >= 0.30 * len(items)
        assert sum(not item["findings"] for item in items) >= 0.15 * len(items)
    for item in _items(datalist):
        if _has_opposite_pair(item):  # the pair are different findings, so swapping sides matters
            lateral = [f["finding"] for f in item["findings"] if f["side"] in ("left", "right")]
            assert len(set(lateral)) == len(lateral)


def test_labels_match_findings_and_masks(small_demo: tuple[Path, dict]) -> None:
    root, datalist = small_demo
    for item in _items(datalist):
        assert set(item["labels"]) == set(demo.FINDINGS)
        present = {f["finding"] for f in item["findings"]}
        assert item["labels"] == {name: int(name in present) for name in demo.FINDINGS}
        for f in item["findings"]:
            assert f["side"] in demo.SIDES and f["severity"] in demo.SEVERITIES
            assert f["zone"] in demo.ZONES
        mask = np.asarray(Image.open(root / item["mask"]))
        assert (mask.max() > 0) == bool(item["findings"])


def test_laterality_on_written_masks(small_demo: tuple[Path, dict]) -> None:
    """Patient's left is on the image's right: a left lesion's mask sits at columns > W/2."""
    root, datalist = small_demo
    checked = {"left": 0, "right": 0}
    for item in _items(datalist):
        lateral = [f for f in item["findings"] if f["side"] != "none"]
        if len(lateral) != 1 or lateral[0]["side"] not in checked:
            continue
        mask = np.asarray(Image.open(root / item["mask"]))
        if any(f["finding"] == "cardiomegaly" for f in item["findings"]):
            continue  # the heart mask would pull the centroid
        cols = np.nonzero(mask)[1]
        width = mask.shape[1]
        side = lateral[0]["side"]
        if side == "left":
            assert cols.mean() > width / 2 and cols.min() >= width / 2 - 1
        else:
            assert cols.mean() < width / 2 and cols.max() <= width / 2
        checked[side] += 1
    assert checked["left"] >= 3 and checked["right"] >= 3


def test_laterality_of_rendered_lesion_in_image() -> None:
    """The pixels brighten on the side the finding names, not only in the mask."""
    anatomy = demo.Anatomy.sample(np.random.default_rng(0))
    normal, _ = demo.render_study([], anatomy, np.random.default_rng(5), 64)
    for side in ("left", "right"):
        finding = {"finding": "effusion", "side": side, "zone": "lower", "severity": "large"}
        image, _ = demo.render_study([finding], anatomy, np.random.default_rng(5), 64)
        diff = image.astype(float) - normal.astype(float)
        right_half, left_half = diff[:, 32:].sum(), diff[:, :32].sum()
        assert (right_half > 3 * left_half) if side == "left" else (left_half > 3 * right_half)


def test_every_finding_has_at_least_five_phrasings() -> None:
    rng = np.random.default_rng(0)
    for name in demo.FINDINGS:
        assert len(set(demo.FINDING_TEMPLATES[name])) >= 5
        side = "none" if name == "cardiomegaly" else "left"
        sentences = set()
        for _ in range(300):
            finding = {"finding": name, "side": side, "zone": str(rng.choice(demo.ZONES_BY_FINDING[name])), "severity": str(rng.choice(demo.SEVERITIES))}
            sentence = demo.describe_finding(finding, rng)
            assert "{" not in sentence and sentence.isascii()
            if side == "left":  # a finding is always reported with its side, and only that side
                assert "left" in sentence and "right" not in sentence
            sentences.add(sentence)
        assert len(sentences) >= 5


def test_reports_name_findings_and_negate_only_absent_ones(small_demo: tuple[Path, dict]) -> None:
    _, datalist = small_demo
    for item in _items(datalist):
        text = item["report"].lower()
        present = {f["finding"] for f in item["findings"]}
        for f in item["findings"]:
            if f["side"] in ("left", "right"):
                assert f["side"] in text
        if "pneumothorax" in present:
            assert "no pneumothorax" not in text and "or pneumothorax" not in text
        if "effusion" in present:
            assert "no pleural effusion" not in text and "no effusion" not in text
        if not item["findings"]:
            assert "left" not in text and "right" not in text
    # the report generator on its own: normal reports are sentence case, and some recur verbatim
    rng = np.random.default_rng(1)
    normals = [demo.make_report([], rng) for _ in range(100)]
    assert all(r[0].isupper() and r.isascii() for r in normals)
    assert len(set(normals)) < len(normals)


def test_ensure_demo_generates_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "demo"
    small = {"n_train": 4, "n_val": 2, "n_test": 2, "image_size": 32}
    path = demo.ensure_demo(str(root), **small)
    assert path == os.path.join(str(root), "datalist.json") and os.path.exists(path)
    assert "generating" in capsys.readouterr().out
    before = os.stat(path).st_mtime_ns
    image = root / json.loads(Path(path).read_text())["training"][0]["image"]
    image_before = image.stat().st_mtime_ns
    assert demo.ensure_demo(str(root), **small) == path
    assert demo.ensure_demo(str(root), datalist=path) == path
    assert capsys.readouterr().out == ""
    assert os.stat(path).st_mtime_ns == before and image.stat().st_mtime_ns == image_before


def test_ensure_demo_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "real_data.csv").write_text("x\n")
    with pytest.raises(FileExistsError):
        demo.ensure_demo(str(tmp_path), n_train=2, n_val=1, n_test=1, image_size=32)


def test_main_demo_cli_hook(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    path = demo.main_demo(str(out), n_train="3", n_val="1", n_test="1", image_size="32", seed="4")
    data = json.loads(Path(path).read_text())
    assert [len(data[s]) for s in SPLITS] == [3, 1, 1]
    mtime = os.stat(path).st_mtime_ns
    assert demo.main_demo(str(out), n_train=3, n_val=1, n_test=1, image_size=32, force="false") == path
    assert os.stat(path).st_mtime_ns == mtime
