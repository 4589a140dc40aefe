"""SIIM-ACR run-length masks and the two DICOM preparers (SIIM-ACR pneumothorax, RSNA pneumonia),
on the real SIIM label file and native-layout trees built from real DICOMs under tmp_path."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA
from PIL import Image

from custom.datasets.common import PrepareError
from custom.datasets.rle import decode_rle, encode_rle, read_siim_rle
from custom.datasets.rsna_pneumonia import prepare_rsna_pneumonia
from custom.datasets.siim_acr import prepare_siim_acr

SIIM_RLE = os.path.join(SHARED_DATA, "iu-reports", "siim-pneumothorax-train-rle.csv.gz")
SIIM_DICOM = os.path.join(SHARED_DATA, "dicom", "siim_cr_chest_monochrome2_jpeg_baseline.dcm")
DX_DICOM = os.path.join(SHARED_DATA, "dicom", "dx_thorax_monochrome1_explicit_vr.dcm")  # 169 rows x 211 columns
SIIM_SIZE = 1024


def dicom_copy(source: str, path: str, sop_uid: str | None = None, patient_id: str | None = "keep") -> None:
    """Save a copy of a real DICOM with a new SOPInstanceUID and PatientID (None removes it)."""
    ds = pydicom.dcmread(source, force=True)
    if sop_uid is not None:
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if patient_id is None:
        del ds.PatientID
    elif patient_id != "keep":
        ds.PatientID = patient_id
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path)


def block_rle(r0: int, r1: int, c0: int, c1: int, height: int) -> str:
    """Relative column-major RLE of the rectangle rows r0..r1-1, columns c0..c1-1, written from the
    format's definition (one run per column; the gap between runs is height minus the run)."""
    run = r1 - r0
    pairs = [(c0 * height + r0, run)] + [(height - run, run)] * (c1 - c0 - 1)
    return " ".join(f"{o} {n}" for o, n in pairs)


def png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------------------------------------
# run-length masks
# ---------------------------------------------------------------------------------------------


def test_real_siim_rle_file_decodes_and_round_trips():
    labels = read_siim_rle(SIIM_RLE)
    rows = [(image_id, source, text) for image_id, entries in labels.items() for source, text in entries]
    assert len(rows) == 12954
    assert len(labels) == 12047
    assert sum(text == "-1" for _, _, text in rows) == 9378
    # the shared SIIM DICOM is a negative
    sop = str(pydicom.dcmread(SIIM_DICOM, stop_before_pixels=True).SOPInstanceUID)
    assert [text for _, text in labels[sop]] == ["-1"]
    empty = decode_rle(labels[sop][0][1], SIIM_SIZE, SIIM_SIZE)
    assert empty.shape == (SIIM_SIZE, SIIM_SIZE) and empty.dtype == bool and not empty.any()
    # the first 200 positive rows: area = sum of run lengths, and decode -> encode gives the row back
    positives = [(image_id, source, text) for image_id, source, text in rows if text != "-1"][:200]
    assert positives[0][1] == "siim-pneumothorax-train-rle.csv.gz:3"
    for _, source, text in positives:
        mask = decode_rle(text, SIIM_SIZE, SIIM_SIZE, source)
        lengths = np.array(text.split(), dtype=np.int64)[1::2]
        assert mask.sum() == lengths.sum(), source
        assert encode_rle(mask) == text, source
    # an image with several rows: each row round-trips alone, the union is their OR
    image_id = next(i for i, entries in labels.items() if len(entries) >= 3)
    masks = [decode_rle(text, SIIM_SIZE, SIIM_SIZE) for _, text in labels[image_id]]
    assert [encode_rle(m) for m in masks] == [text for _, text in labels[image_id]]
    assert np.logical_or.reduce(masks).sum() >= max(m.sum() for m in masks) > 0


def test_rle_is_relative_and_column_major():
    # H=3, W=4; column-major flat order is col0 rows 0..2, col1 rows 0..2, ...
    expected = np.array(
        [
            [0, 1, 0, 0],
            [1, 1, 0, 1],
            [1, 0, 0, 1],
        ],
        dtype=bool,
    )
    # flat = [0,1,1, 1,1,0, 0,0,0, 0,1,1]: run at 1 of 4 (ends at 5), next run 5 after it, 2 long
    text = "1 4 5 2"
    mask = decode_rle(text, 3, 4)
    assert mask.shape == (3, 4)
    np.testing.assert_array_equal(mask, expected)
    assert encode_rle(expected) == text
    assert encode_rle(np.zeros((3, 4), bool)) == "-1"
    assert not decode_rle(" -1 ", 3, 4).any()
    np.testing.assert_array_equal(decode_rle("0 12", 3, 4), np.ones((3, 4), bool))
    assert encode_rle(np.ones((3, 4), bool)) == "0 12"


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 4 5", "3 values; expected 'offset length' pairs"),
        ("1 4 x 2", "non-integer value 'x'"),
        ("1 4 2.5 2", "non-integer value '2.5'"),
        ("1 4 -2 2", "negative offset (-2)"),
        ("1 -4", "run of length -4"),
        ("1 0", "run of length 0"),
        ("1 4 5 3", "runs to pixel 13, past the 3x4 image (12 pixels)"),
        ("", "empty EncodedPixels"),
    ],
)
def test_malformed_rle_is_a_clear_error(text, message):
    with pytest.raises(ValueError) as caught:
        decode_rle(text, 3, 4, source="train-rle.csv:7")
    assert isinstance(caught.value, PrepareError)
    assert str(caught.value).startswith("train-rle.csv:7: ")
    assert message in str(caught.value)


# ---------------------------------------------------------------------------------------------
# SIIM-ACR
# ---------------------------------------------------------------------------------------------

SIIM_UID = "1.2.826.0.1.3680043.99.{}"


def siim_tree(root, rows: list[str]) -> dict[str, str]:
    """A native SIIM tree: five training DICOMs (copies of the real one) under
    dicom-images-train/<study>/<series>/<sop>.dcm, one test DICOM, and train-rle.csv with ``rows``.
    Returns name -> SOPInstanceUID."""
    patients = {"a": "P1", "b": "P1", "c": "P2", "d": "P3", "e": None, "f": "P4"}
    uids = {name: SIIM_UID.format(n + 1) for n, name in enumerate(patients)}
    for name, patient in patients.items():
        folder = "dicom-images-train" if name != "f" else "dicom-images-test"
        uid = uids[name]
        path = os.path.join(root, folder, f"{uid}.2", f"{uid}.3", f"{uid}.dcm")
        dicom_copy(SIIM_DICOM, path, sop_uid=uid, patient_id=patient)
    # a training DICOM without a csv row
    dicom_copy(SIIM_DICOM, os.path.join(root, "dicom-images-train", "x", "y", "1.2.3.999.dcm"), sop_uid="1.2.3.999")
    with open(os.path.join(root, "train-rle.csv"), "w", encoding="utf-8") as f:
        f.write("ImageId, EncodedPixels\n")
        for row in rows:
            f.write(row.format(**uids) + "\n")
    return uids


# image a: two regions in two rows (rows 10..19 x cols 100..104, rows 500..502 x cols 7..8)
A_ROWS = [f"{{a}},{block_rle(10, 20, 100, 105, SIIM_SIZE)}", f"{{a}},{block_rle(500, 503, 7, 9, SIIM_SIZE)}"]
SIIM_ROWS = A_ROWS + ["{b},-1", "{c}, -1", f"{{d}},{block_rle(0, 1, 1023, 1024, SIIM_SIZE)}", "{e},-1"]


def test_prepare_siim_acr_native_tree(tmp_path):
    root, out = tmp_path / "siim", tmp_path / "out" / "siim.json"
    uids = siim_tree(str(root), SIIM_ROWS)
    datalist = prepare_siim_acr(str(root), str(out), seed=3, val_frac=0.2, test_frac=0.2, quiet=True)
    items = {it["image"].rsplit("/", 1)[-1][: -len(".dcm")]: it for s in ("training", "validation", "test")
             for it in datalist[s]}
    name_of = {uid: name for name, uid in uids.items()}
    items = {name_of[k]: v for k, v in items.items()}
    assert sorted(items) == ["a", "b", "c", "d", "e"]
    uid = uids["a"]
    assert items["a"]["image"] == f"dicom-images-train/{uid}.2/{uid}.3/{uid}.dcm"
    assert {k: it["labels"] for k, it in items.items()} == {
        "a": {"Pneumothorax": 1}, "b": {"Pneumothorax": 0}, "c": {"Pneumothorax": 0},
        "d": {"Pneumothorax": 1}, "e": {"Pneumothorax": 0},
    }
    # PatientID from the header; the image id when the header has none
    assert {k: it["patient_id"] for k, it in items.items()} == {
        "a": "P1", "b": "P1", "c": "P2", "d": "P3", "e": uids["e"],
    }
    assert all(it["view"] == "PA" for it in items.values())
    split_of = {name: s for s in ("training", "validation", "test") for it in datalist[s]
                for name in [name_of[it["image"].rsplit("/", 1)[-1][:-4]]]}
    assert split_of["a"] == split_of["b"]  # one patient, one split
    # masks: PNGs next to the datalist, read back as array[row, col]
    mask_dir = tmp_path / "out" / "siim_acr_masks"
    assert sorted(os.listdir(mask_dir)) == sorted(f"{uids[n]}.png" for n in "abcde")
    a = png(mask_dir / f"{uids['a']}.png")
    assert a.shape == (SIIM_SIZE, SIIM_SIZE) and set(np.unique(a)) == {0, 255}
    assert (a > 0).sum() == 10 * 5 + 3 * 2  # both rows of image a, OR-ed
    assert (a[10:20, 100:105] == 255).all() and (a[500:503, 7:9] == 255).all()
    d = png(mask_dir / f"{uids['d']}.png")
    assert (d > 0).sum() == 1 and d[0, 1023] == 255  # top-right pixel: last column, first row
    for name in "bce":
        negative = png(mask_dir / f"{uids[name]}.png")
        assert negative.shape == (SIIM_SIZE, SIIM_SIZE) and not negative.any()
    assert items["a"]["mask"] == str(mask_dir / f"{uids['a']}.png")  # outside root: absolute
    summary = datalist["prepare"]["summary"]
    assert sum(s["items"] for s in summary["splits"].values()) == 5
    assert sum(s["with_mask"] for s in summary["splits"].values()) == 5
    assert summary["dropped"] == {
        "DICOM without a row in train-rle.csv": 1,
        "dicom-images-test image (the challenge's unlabelled test set)": 1,
    }
    assert summary["skipped_bad_input"] == {}
    assert summary["notes"] == ["1 DICOM(s) without PatientID: their image id is the split unit"]
    assert out.exists()


def test_prepare_siim_acr_bad_rows(tmp_path):
    root = tmp_path / "siim"
    siim_tree(str(root), SIIM_ROWS + ["1.2.3.404,-1"])
    # the missing DICOM's row is line 8 (after the header and six rows)
    with pytest.raises(PrepareError, match=r"train-rle\.csv:8: DICOM not found for the csv row \(no 1\.2\.3\.404\.dcm"):
        prepare_siim_acr(str(root), str(tmp_path / "a.json"), quiet=True)
    datalist = prepare_siim_acr(str(root), str(tmp_path / "b.json"), on_error="skip", quiet=True)
    summary = datalist["prepare"]["summary"]
    assert summary["skipped_bad_input"] == {"DICOM not found for the csv row": 1}
    assert summary["examples"]["DICOM not found for the csv row"] == "train-rle.csv:8"
    assert sum(s["items"] for s in summary["splits"].values()) == 5
    # a malformed run-length string names its row
    siim_tree(str(root), SIIM_ROWS[:1] + ["{b},5 3 x 1"])
    with pytest.raises(PrepareError, match=r"train-rle\.csv:3: malformed EncodedPixels \(.*non-integer value 'x'"):
        prepare_siim_acr(str(root), str(tmp_path / "c.json"), quiet=True)


def test_prepare_siim_acr_with_the_real_label_file(tmp_path):
    """The released csv.gz next to the one released DICOM: 1 item (negative), every other row skipped."""
    root = tmp_path / "siim"
    sop = str(pydicom.dcmread(SIIM_DICOM, stop_before_pixels=True).SOPInstanceUID)
    folder = root / "dicom-images-train" / "study" / "series"
    folder.mkdir(parents=True)
    shutil.copyfile(SIIM_DICOM, folder / f"{sop}.dcm")
    shutil.copyfile(SIIM_RLE, root / "train-rle.csv.gz")
    datalist = prepare_siim_acr(str(root), str(tmp_path / "siim.json"), on_error="skip", quiet=True)
    items = [it for s in ("training", "validation", "test") for it in datalist[s]]
    assert len(items) == 1
    assert items[0]["labels"] == {"Pneumothorax": 0}
    assert items[0]["patient_id"] == "16d7f894-55d7-4d95-8957-d18987f0e981"
    assert datalist["prepare"]["summary"]["skipped_bad_input"] == {"DICOM not found for the csv row": 12953}


# ---------------------------------------------------------------------------------------------
# RSNA pneumonia
# ---------------------------------------------------------------------------------------------

LABELS_HEADER = "patientId,x,y,width,height,Target"


def rsna_tree(root, label_rows: list[str], class_rows: list[str] | None = None) -> None:
    images = os.path.join(root, "stage_2_train_images")
    os.makedirs(images)
    shutil.copyfile(DX_DICOM, os.path.join(images, "dx-1.dcm"))
    shutil.copyfile(SIIM_DICOM, os.path.join(images, "siim-2.dcm"))
    dicom_copy(SIIM_DICOM, os.path.join(root, "stage_2_test_images", "test-3.dcm"), sop_uid="1.2.3.3")
    with open(os.path.join(root, "stage_2_train_labels.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join([LABELS_HEADER, *label_rows]) + "\n")
    if class_rows is not None:
        with open(os.path.join(root, "stage_2_detailed_class_info.csv"), "w", encoding="utf-8") as f:
            f.write("\n".join(["patientId,class", *class_rows]) + "\n")


def test_prepare_rsna_pneumonia_native_tree(tmp_path):
    root, out = tmp_path / "rsna", tmp_path / "out" / "rsna.json"
    # dx-1 is 169 rows x 211 columns; box 2 runs past the right edge (clipped to 31 columns)
    rsna_tree(
        str(root),
        ["dx-1,150.0,10.0,50.0,20.0,1", "dx-1,180,20,40,30,1", "siim-2,,,,,0"],
        ["dx-1,Lung Opacity", "dx-1,Lung Opacity", "siim-2,No Lung Opacity / Not Normal"],
    )
    datalist = prepare_rsna_pneumonia(str(root), str(out), quiet=True)
    items = {it["patient_id"]: it for s in ("training", "validation", "test") for it in datalist[s]}
    assert sorted(items) == ["dx-1", "siim-2"]
    assert items["dx-1"]["image"] == "stage_2_train_images/dx-1.dcm"
    assert items["dx-1"]["labels"] == {"Pneumonia": 1} and items["siim-2"]["labels"] == {"Pneumonia": 0}
    assert items["dx-1"]["class"] == "Lung Opacity"
    assert items["siim-2"]["class"] == "No Lung Opacity / Not Normal"
    mask = png(items["dx-1"]["mask"])
    assert mask.shape == (169, 211)  # the DICOM's Rows x Columns
    # union of rows 10..29 x cols 150..199 (1000) and rows 20..49 x cols 180..210 (930), overlap 20 x 10
    assert (mask > 0).sum() == 1000 + 930 - 200
    # x is the column: columns 150..210 exist only because the image is 211 wide (169 rows)
    assert (mask[10:30, 150:200] == 255).all() and (mask[20:50, 180:211] == 255).all()
    assert not mask[:10].any() and not mask[:, :150].any() and not mask[50:].any()
    negative = png(items["siim-2"]["mask"])
    assert negative.shape == (1024, 1024) and not negative.any()
    summary = datalist["prepare"]["summary"]
    assert summary["kept_incomplete"] == {"box extends past the image (clipped)": 1}
    assert summary["examples"]["box extends past the image (clipped)"] == "stage_2_train_labels.csv:3"
    assert summary["dropped"] == {"stage_2_test_images image (the challenge's unlabelled test set)": 1}
    assert any("patientId identifies one image" in note for note in summary["notes"])
    assert sorted(os.listdir(tmp_path / "out" / "rsna_pneumonia_masks")) == ["dx-1.png", "siim-2.png"]


@pytest.mark.parametrize(
    "rows, message",
    [
        (["dx-1,,,,,1"], r"stage_2_train_labels\.csv:2: inconsistent labels row \(Target 1 row without a box\)"),
        (["siim-2,,,,,0", "dx-1,10,abc,5,5,1"], r"stage_2_train_labels\.csv:3: inconsistent labels row "
                                                r"\(non-numeric box cell"),
        (["dx-1,10,10,5,5,yes"], r"stage_2_train_labels\.csv:2: inconsistent labels row \(Target is 'yes'"),
        (["dx-1,1,1,5,5,0"], r"stage_2_train_labels\.csv:2: inconsistent labels row \(Target 0 row with box"),
        (["dx-1,10,10,5,5,1", "dx-1,,,,,0"], r"stage_2_train_labels\.csv:2: image has both Target 0 and Target 1"),
        (["dx-1,300,10,5,5,1"], r"stage_2_train_labels\.csv:2: box lies outside the image"),
        (["nope,,,,,0"], r"stage_2_train_labels\.csv:2: DICOM not found for the labels row"),
    ],
)
def test_prepare_rsna_pneumonia_bad_rows(tmp_path, rows, message):
    rsna_tree(str(tmp_path / "rsna"), rows + ["siim-2,,,,,0"] * ("siim-2,,,,,0" not in rows))
    with pytest.raises(PrepareError, match=message):
        prepare_rsna_pneumonia(str(tmp_path / "rsna"), str(tmp_path / "a.json"), quiet=True)
    datalist = prepare_rsna_pneumonia(str(tmp_path / "rsna"), str(tmp_path / "b.json"), on_error="skip", quiet=True)
    assert sum(datalist["prepare"]["summary"]["skipped_bad_input"].values()) == 1
    assert [it["patient_id"] for s in ("training", "validation", "test") for it in datalist[s]] == ["siim-2"]


def test_rle_csv_gz_is_read_like_csv(tmp_path):
    path = tmp_path / "train-rle.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("ImageId, EncodedPixels\nimg1, 1 4 5 2\nimg1,-1\nimg2,-1\n")
    assert read_siim_rle(str(path)) == {
        "img1": [("train-rle.csv.gz:2", "1 4 5 2"), ("train-rle.csv.gz:3", "-1")],
        "img2": [("train-rle.csv.gz:4", "-1")],
    }
