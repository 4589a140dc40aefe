"""Tests of the table-driven classification preparers (CheXpert, CheXpert 5×200, COVIDx, NIH
ChestX-ray14) on tiny native-layout trees built in tmp_path from real radiographs."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import SHARED_DATA
from custom.datasets.chexpert import COMPETITION, OBSERVATIONS, prepare_chexpert, prepare_chexpert_5x200
from custom.datasets.common import PrepareError
from custom.datasets.covidx import prepare_covidx
from custom.datasets.nih_cxr14 import FINDINGS, prepare_nih_cxr14

CXR_IMAGES = os.path.join(SHARED_DATA, "cxr-notes", "images")
SPLITS = ("training", "validation", "test")
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
# the real header of Data_Entry_2017*.csv: bracketed names with unquoted commas, trailing comma
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


# --------------------------------------------------------------------------------------------
# Real images, made small and distinct
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def radiographs() -> list[Image.Image]:
    """80 distinct real radiographs (cxr-notes, byte-identical copies left out), 40×40 grayscale,
    so that no two written files merge as identical images unless a test wants them to."""
    seen, images = set(), []
    for name in sorted(os.listdir(CXR_IMAGES)):
        with open(os.path.join(CXR_IMAGES, name), "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        images.append(Image.open(os.path.join(CXR_IMAGES, name)).convert("L").resize((40, 40)))
        if len(images) == 80:
            return images
    raise AssertionError("cxr-notes has fewer than 80 distinct images")


class ImageSource:
    """Hands out the next distinct real radiograph, written as PNG or JPG at a given path."""

    def __init__(self, images: list[Image.Image]) -> None:
        self.images, self.next = images, 0

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.images[self.next].save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
        self.next += 1


def split_of(datalist: dict) -> dict[str, str]:
    return {it["image"]: split for split in SPLITS for it in datalist[split]}


def assert_patient_disjoint(datalist: dict) -> None:
    patients = {split: {it["patient_id"] for it in datalist[split]} for split in SPLITS}
    assert not patients["training"] & patients["validation"]
    assert not patients["training"] & patients["test"]
    assert not patients["validation"] & patients["test"]


# --------------------------------------------------------------------------------------------
# CheXpert
# --------------------------------------------------------------------------------------------


def chexpert_row(path: str, frontal: bool = True, ap_pa: str = "AP", **cells: str) -> list[str]:
    """A train.csv/valid.csv row; ``cells`` by observation name with spaces as underscores."""
    labels = {name: "" for name in OBSERVATIONS}
    labels.update({k.replace("_", " "): v for k, v in cells.items()})
    return [path, "Female", "60", "Frontal" if frontal else "Lateral", ap_pa if frontal else "",
            *(labels[name] for name in OBSERVATIONS)]


def write_chexpert(root: Path, source: ImageSource, train: list[list[str]], valid: list[list[str]],
                   folder: str = "CheXpert-v1.0-small", missing: tuple[str, ...] = ()) -> Path:
    """The native tree under ``root/folder``; images for every row except paths in ``missing``."""
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        with open(base / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CHEXPERT_HEADER)
            writer.writerows(rows)
        for row in rows:
            if row[0] not in missing:
                source.write(root / row[0])
    return base


def chexpert_path(kind: str, patient: int, study: int, view: int, frontal: bool = True) -> str:
    return (f"CheXpert-v1.0-small/{kind}/patient{patient:05d}/study{study}/"
            f"view{view}_{'frontal' if frontal else 'lateral'}.jpg")


@pytest.fixture()
def chexpert_tree(tmp_path: Path, radiographs: list[Image.Image]) -> tuple[Path, list[list[str]], list[list[str]]]:
    """12 training patients (2 frontal studies each, patient 1 also a lateral) and 3 valid patients."""
    train = []
    for p in range(1, 13):
        train.append(chexpert_row(chexpert_path("train", p, 1, 1), ap_pa="AP", Edema="1.0", Cardiomegaly="-1.0"))
        train.append(chexpert_row(chexpert_path("train", p, 2, 1), ap_pa="PA", No_Finding="1.0"))
    train.insert(2, chexpert_row(chexpert_path("train", 1, 1, 2, frontal=False), frontal=False, Edema="1.0"))
    valid = [chexpert_row(chexpert_path("valid", p, 1, 1), ap_pa="PA", Atelectasis="1.0", Edema="0.0")
             for p in range(64541, 64544)]
    write_chexpert(tmp_path, ImageSource(radiographs), train, valid)
    return tmp_path, train, valid


def test_chexpert_valid_is_test_patients_disjoint_laterals_dropped(chexpert_tree, tmp_path: Path) -> None:
    root, train, valid = chexpert_tree
    datalist = prepare_chexpert(str(root), str(tmp_path / "out.json"), val_frac=0.25, quiet=True)
    where = split_of(datalist)
    assert sorted(it["image"] for it in datalist["test"]) == sorted(row[0] for row in valid)
    train_images = {row[0] for row in train if row[3] == "Frontal"}
    assert {im for im, s in where.items() if s != "test"} == train_images
    assert len(datalist["validation"]) == 6 and len(datalist["training"]) == 18  # 3 and 9 patients
    assert_patient_disjoint(datalist)
    assert datalist["label_names"] == list(OBSERVATIONS)
    item = next(it for it in datalist["training"] + datalist["validation"]
                if it["image"].endswith("study1/view1_frontal.jpg"))
    assert item["patient_id"].startswith("patient000") and item["view"] == "AP"
    assert item["labels"]["Edema"] == 1 and item["labels"]["Cardiomegaly"] == -1 and item["labels"]["Fracture"] == 0
    summary = datalist["prepare"]["summary"]
    assert summary["dropped"] == {"view L not selected (views=frontal)": 1}
    assert summary["examples"]["view L not selected (views=frontal)"] == "train.csv:4"

    # ROOT = the CheXpert folder itself: same items, paths relative to that folder
    inner = prepare_chexpert(str(root / "CheXpert-v1.0-small"), str(tmp_path / "inner.json"), val_frac=0.25,
                             quiet=True)
    assert {im: s for im, s in split_of(inner).items()} == {
        im.removeprefix("CheXpert-v1.0-small/"): s for im, s in where.items()}
    # views=all keeps the lateral, with view "L"
    everything = prepare_chexpert(str(root), str(tmp_path / "all.json"), views="all", quiet=True)
    laterals = [it for s in SPLITS for it in everything[s] if it["view"] == "L"]
    assert [it["image"] for it in laterals] == [chexpert_path("train", 1, 1, 2, frontal=False)]


@pytest.mark.parametrize("policy, expected", [("ignore", -1), ("ones", 1), ("zeros", 0)])
def test_chexpert_uncertain_policy(chexpert_tree, tmp_path: Path, policy: str, expected: int) -> None:
    root, _, _ = chexpert_tree
    datalist = prepare_chexpert(str(root), str(tmp_path / "out.json"), uncertain=policy, quiet=True)
    study1 = [it for s in ("training", "validation") for it in datalist[s] if "/study1/" in it["image"]]
    assert len(study1) == 12
    assert {it["labels"]["Cardiomegaly"] for it in study1} == {expected}  # the -1.0 cells
    assert {it["labels"]["Edema"] for it in study1} == {1}
    assert {it["labels"]["Pneumonia"] for it in study1} == {0}  # blank = not mentioned
    assert datalist["prepare"]["options"]["uncertain"] == policy


def test_chexpert_valid_as_validation(chexpert_tree, tmp_path: Path) -> None:
    root, _, valid = chexpert_tree
    datalist = prepare_chexpert(str(root), str(tmp_path / "out.json"), valid_as="validation", test_frac=0.25,
                                quiet=True)
    assert sorted(it["image"] for it in datalist["validation"]) == sorted(row[0] for row in valid)
    assert len(datalist["test"]) == 6 and {it["image"].split("/")[1] for it in datalist["test"]} == {"train"}
    assert_patient_disjoint(datalist)
    with pytest.raises(ValueError, match="test_frac applies only with --valid_as validation"):
        prepare_chexpert(str(root), str(tmp_path / "bad.json"), test_frac=0.2, quiet=True)


def test_chexpert_bad_rows_name_file_and_line(tmp_path: Path, radiographs: list[Image.Image]) -> None:
    train = [chexpert_row(chexpert_path("train", p, 1, 1), Edema="1.0") for p in range(1, 7)]
    train[1] = train[1][:10]  # a truncated row: train.csv line 3
    train[3][CHEXPERT_HEADER.index("Edema")] = "2.0"  # line 5
    missing = chexpert_path("train", 6, 1, 1)  # line 7
    valid = [chexpert_row(chexpert_path("valid", 64541, 1, 1))]
    root = tmp_path / "data"
    write_chexpert(root, ImageSource(radiographs), train, valid, missing=(missing, train[1][0]))
    out = str(tmp_path / "out.json")
    with pytest.raises(PrepareError, match=r"^train\.csv:3: 10 fields, the header has 19 \(malformed row\)"):
        prepare_chexpert(str(root), out, quiet=True)
    train[1] = chexpert_row(train[1][0], Edema="1.0")
    write_chexpert(root, ImageSource(radiographs), train, valid, missing=(missing,))
    with pytest.raises(PrepareError, match=r"^train\.csv:5: label cell is not 1, 0, -1 or blank "
                                           r"\(column 'Edema' has '2\.0'\)"):
        prepare_chexpert(str(root), out, quiet=True)
    train[3][CHEXPERT_HEADER.index("Edema")] = "1.0"
    write_chexpert(root, ImageSource(radiographs), train, valid, missing=(missing,))
    with pytest.raises(PrepareError, match=r"^train\.csv:7: image file not found .*patient00006"):
        prepare_chexpert(str(root), out, quiet=True)
    train[1] = train[1][:10]
    train[3][CHEXPERT_HEADER.index("Edema")] = "2.0"
    write_chexpert(root, ImageSource(radiographs), train, valid, missing=(missing,))
    datalist = prepare_chexpert(str(root), out, on_error="skip", quiet=True)
    assert datalist["prepare"]["summary"]["skipped_bad_input"] == {
        "10 fields, the header has 19 (malformed row)": 1, "label cell is not 1, 0, -1 or blank": 1,
        "image file not found": 1}
    assert sum(len(datalist[s]) for s in SPLITS) == 3 + 1


# --------------------------------------------------------------------------------------------
# CheXpert 5×200
# --------------------------------------------------------------------------------------------


def only(name: str, **more: str) -> dict[str, str]:
    """Cells for an image positive for ``name`` only among the competition classes."""
    cells = {c.replace(" ", "_"): "0.0" for c in COMPETITION}
    cells[name.replace(" ", "_")] = "1.0"
    cells.update(more)
    return cells


def test_chexpert_5x200_protocol(tmp_path: Path, radiographs: list[Image.Image]) -> None:
    rows: list[list[str]] = []
    eligible: dict[str, int] = {}  # image → class of every row that is exclusively positive
    patient = 0
    for label, name in enumerate(COMPETITION):
        # Edema has 2 eligible images (fewer than per_class); the others 6 over 4 patients
        counts = [1, 1] if name == "Edema" else [3, 1, 1, 1]
        for n_images in counts:
            patient += 1
            for study in range(1, n_images + 1):
                path = chexpert_path("train", patient, study, 1)
                rows.append(chexpert_row(path, **only(name, Fracture="1.0")))  # other observations do not matter
                eligible[path] = label
    patient += 1  # not eligible: two positives, a lateral, an uncertain second class, nothing positive
    rows.append(chexpert_row(chexpert_path("train", patient, 1, 1), **only("Edema", Atelectasis="1.0")))
    rows.append(chexpert_row(chexpert_path("train", patient, 1, 2, frontal=False), frontal=False, **only("Edema")))
    uncertain_row = chexpert_path("train", patient, 2, 1)
    rows.append(chexpert_row(uncertain_row, **only("Cardiomegaly", Edema="-1.0")))
    rows.append(chexpert_row(chexpert_path("train", patient, 3, 1), **only("Edema", Edema="0.0")))
    patient += 1  # a byte-identical copy of an Edema image under another patient id
    copy_row = chexpert_path("train", patient, 1, 1)
    rows.append(chexpert_row(copy_row, **only("Edema")))
    eligible[copy_row] = COMPETITION.index("Edema")
    write_chexpert(tmp_path, ImageSource(radiographs), rows, [])
    edema = [path for path, label in eligible.items() if label == COMPETITION.index("Edema")]
    shutil.copyfile(tmp_path / edema[0], tmp_path / copy_row)
    datalist = prepare_chexpert_5x200(str(tmp_path), str(tmp_path / "out.json"), per_class=3, val_frac=0.3,
                                      seed=5, quiet=True)

    assert datalist["label_names"] == list(COMPETITION)
    test_counts = [sum(it["labels"] == c for it in datalist["test"]) for c in range(5)]
    assert test_counts == [3, 3, 3, 2, 3]  # the copy is no third Edema image
    for it in datalist["test"]:
        assert eligible[it["image"]] == it["labels"]  # positive for exactly its class
    test_patients = {it["patient_id"] for it in datalist["test"]}
    rest = datalist["training"] + datalist["validation"]
    assert rest and not test_patients & {it["patient_id"] for it in rest}
    for it in rest:
        assert eligible[it["image"]] == it["labels"]
    # every eligible image is in test, or in training/validation, or dropped for its test patient
    summary = datalist["prepare"]["summary"]
    excluded = summary["dropped"]["patient has an image in the 5x200 test split (kept out of training/validation)"]
    assert len(datalist["test"]) + len(rest) + excluded == len(eligible)
    assert summary["dropped"]["not positive for exactly one of the 5 competition classes"] == 3
    assert summary["dropped"]["view L is not frontal"] == 1
    assert any(note.startswith("Edema: only 2 eligible image(s)") for note in summary["notes"])
    assert_patient_disjoint(datalist)
    # the copy's patient shares an image with a test patient: left out of training/validation
    assert copy_row not in split_of(datalist) and f"patient{patient:05d}" not in {it["patient_id"] for it in rest}

    # the same seed draws the same test set; uncertain=zeros makes the Cardiomegaly+uncertain row eligible
    again = prepare_chexpert_5x200(str(tmp_path), str(tmp_path / "again.json"), per_class=3, val_frac=0.3,
                                   seed=5, quiet=True)
    assert again["test"] == datalist["test"]
    zeros = prepare_chexpert_5x200(str(tmp_path), str(tmp_path / "zeros.json"), per_class=3, uncertain="zeros",
                                   quiet=True)
    items = {it["image"]: it["labels"] for s in SPLITS for it in zeros[s]}
    assert items[uncertain_row] == COMPETITION.index("Cardiomegaly")


# --------------------------------------------------------------------------------------------
# COVIDx
# --------------------------------------------------------------------------------------------


def write_covidx(root: Path, source: ImageSource, lists: dict[str, list[str]], names: dict[str, str] | None = None,
                 missing: tuple[str, ...] = ()) -> None:
    """``lists``: split → lines; images written under ROOT/<split>/ for each line's file name."""
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in lists.items():
        (root / (names or {}).get(split, f"{split}.txt")).write_text("\n".join(lines) + "\n")
        for line in lines:
            filename = line.split()[1]
            if filename not in missing:
                source.write(root / split / filename)


BINARY_TRAIN = [
    # patient 1 of cohen and patient 1 of rsna are two people: the split unit is source:patient
    "1 c1a.jpg positive cohen", "1 c1b.jpg positive cohen", "1 r1.png negative rsna",
    *(f"{p} r{p}.png {'negative' if p % 2 else 'positive'} rsna" for p in range(2, 12)),
]
BINARY_TEST = ["1 s1.png positive sirm", "50 r50.png negative rsna", "51 r51.png positive rsna"]


def test_covidx_official_test_and_source_qualified_patients(tmp_path: Path, radiographs: list[Image.Image]) -> None:
    write_covidx(tmp_path, ImageSource(radiographs), {"train": BINARY_TRAIN, "test": BINARY_TEST})
    datalist = prepare_covidx(str(tmp_path), str(tmp_path / "out.json"), val_frac=0.25, quiet=True)
    assert datalist["label_names"] == ["negative", "positive"]
    assert sorted(it["image"] for it in datalist["test"]) == ["test/r50.png", "test/r51.png", "test/s1.png"]
    where = split_of(datalist)
    assert {im for im, s in where.items() if s != "test"} == {f"train/{line.split()[1]}" for line in BINARY_TRAIN}
    assert datalist["validation"] and datalist["training"]
    assert_patient_disjoint(datalist)
    items = {it["image"]: it for s in SPLITS for it in datalist[s]}
    assert items["train/c1a.jpg"]["patient_id"] == "cohen:1" and items["train/r1.png"]["patient_id"] == "rsna:1"
    assert where["train/c1a.jpg"] == where["train/c1b.jpg"]  # one patient, one split
    assert items["train/c1a.jpg"]["labels"] == 1 and items["train/r1.png"]["labels"] == 0
    assert items["test/s1.png"]["data_source"] == "sirm"


def test_covidx_val_list_and_old_three_class_release(tmp_path: Path, radiographs: list[Image.Image]) -> None:
    source = ImageSource(radiographs)
    val = ["60 v60.png negative rsna", "61 v61.png positive bimcv"]
    write_covidx(tmp_path / "cxr3", source, {"train": BINARY_TRAIN, "val": val, "test": BINARY_TEST})
    datalist = prepare_covidx(str(tmp_path / "cxr3"), str(tmp_path / "cxr3.json"), quiet=True)
    assert sorted(it["image"] for it in datalist["validation"]) == ["val/v60.png", "val/v61.png"]
    assert len(datalist["training"]) == len(BINARY_TRAIN) and len(datalist["test"]) == 3

    # COVIDx v8A names its lists train_COVIDx8A.txt / test_COVIDx8A.txt, lines without a source
    old_train = [f"{p} o{p}.png {('normal', 'pneumonia', 'COVID-19')[p % 3]}" for p in range(9)]
    old_test = ["90 t90.png COVID-19", "91 t91.png normal", "92 t92.png pneumonia"]
    write_covidx(tmp_path / "v8a", source, {"train": old_train, "test": old_test},
                 names={"train": "train_COVIDx8A.txt", "test": "test_COVIDx8A.txt"})
    old = prepare_covidx(str(tmp_path / "v8a"), str(tmp_path / "v8a.json"), val_frac=0.34, quiet=True)
    assert old["label_names"] == ["normal", "pneumonia", "COVID-19"]
    assert {it["image"]: it["labels"] for it in old["test"]} == {"test/t90.png": 2, "test/t91.png": 0,
                                                                  "test/t92.png": 1}
    assert {it["patient_id"] for it in old["test"]} == {"90", "91", "92"}
    assert len(old["validation"]) == 3  # stratified: one patient of each class


def test_covidx_bad_lines(tmp_path: Path, radiographs: list[Image.Image]) -> None:
    train = list(BINARY_TRAIN)
    train[2] = "1 r1.png Covid rsna"  # line 3
    train[4] = "3 r3.png"  # line 5
    write_covidx(tmp_path, ImageSource(radiographs), {"train": train, "test": BINARY_TEST}, missing=("r50.png",))
    out = str(tmp_path / "out.json")
    with pytest.raises(PrepareError, match=r"^train\.txt:3: unknown label 'Covid'"):
        prepare_covidx(str(tmp_path), out, quiet=True)
    datalist = prepare_covidx(str(tmp_path), out, on_error="skip", quiet=True)
    assert datalist["prepare"]["summary"]["skipped_bad_input"] == {
        "unknown label 'Covid'": 1, "2 field(s); expected 'patient_id filename label [source]'": 1,
        "image file not found": 1}
    assert datalist["prepare"]["summary"]["examples"]["image file not found"] == "test.txt:2"
    assert sorted(it["image"] for it in datalist["test"]) == ["test/r51.png", "test/s1.png"]
    # a mix of the two label vocabularies is refused
    (tmp_path / "test.txt").write_text("1 s1.png COVID-19 sirm\n")
    with pytest.raises(PrepareError, match="mix label vocabularies"):
        prepare_covidx(str(tmp_path), out, on_error="skip", quiet=True)


# --------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# --------------------------------------------------------------------------------------------


def nih_row(name: str, findings: str, patient: int, view: str = "PA", trailing: bool = True) -> str:
    return f"{name},{findings},0,{patient},058Y,M,{view},2500,2048,0.143,0.143" + ("," if trailing else "")


def write_nih(root: Path, source: ImageSource, rows: list[str], test: list[str], train_val: list[str],
              csv_name: str = "Data_Entry_2017_v2020.csv", missing: tuple[str, ...] = ()) -> None:
    """Images alternate between images_001/images/ and images_002/images/, as the archives unpack."""
    root.mkdir(parents=True, exist_ok=True)
    (root / csv_name).write_text("\n".join([NIH_HEADER, *rows]) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    for n, row in enumerate(rows):
        name = row.split(",")[0]
        if name not in missing:
            source.write(root / f"images_{1 + n % 2:03d}" / "images" / name)


def nih_tree_rows() -> tuple[list[str], list[str], list[str]]:
    """10 patients × 2 follow-ups; patients 9 and 10 are the official test set."""
    rows, test, train_val = [], [], []
    findings = ["No Finding", "Cardiomegaly|Effusion", "Hernia", "Pleural_Thickening|Mass|Nodule"]
    for p in range(1, 11):
        for follow_up in range(2):
            name = f"{p:08d}_{follow_up:03d}.png"
            rows.append(nih_row(name, findings[(p + follow_up) % 4], p, view="AP" if follow_up else "PA",
                                trailing=p % 2 == 0))
            (test if p >= 9 else train_val).append(name)
    return rows, test, train_val


def test_nih_official_test_labels_and_views(tmp_path: Path, radiographs: list[Image.Image]) -> None:
    rows, test, train_val = nih_tree_rows()
    write_nih(tmp_path, ImageSource(radiographs), rows, test, train_val)
    datalist = prepare_nih_cxr14(str(tmp_path), str(tmp_path / "out.json"), val_frac=0.25, quiet=True)
    assert datalist["label_names"] == list(FINDINGS)
    assert sorted(it["image"].rsplit("/", 1)[1] for it in datalist["test"]) == sorted(test)
    assert {it["patient_id"] for it in datalist["test"]} == {"9", "10"}
    assert len(datalist["validation"]) == 4 and len(datalist["training"]) == 12
    assert_patient_disjoint(datalist)
    items = {it["image"].rsplit("/", 1)[1]: it for s in SPLITS for it in datalist[s]}
    assert items["00000001_000.png"]["image"] == "images_001/images/00000001_000.png"
    assert items["00000001_000.png"]["labels"] == {**dict.fromkeys(FINDINGS, 0), "Cardiomegaly": 1, "Effusion": 1}
    assert items["00000004_000.png"]["labels"] == dict.fromkeys(FINDINGS, 0)  # No Finding
    assert [k for k, v in items["00000003_000.png"]["labels"].items() if v] == ["Mass", "Nodule", "Pleural_Thickening"]
    assert [k for k, v in items["00000002_000.png"]["labels"].items() if v] == ["Hernia"]
    assert items["00000002_000.png"]["view"] == "PA" and items["00000002_001.png"]["view"] == "AP"
    only_pa = prepare_nih_cxr14(str(tmp_path), str(tmp_path / "pa.json"), views=["PA"], quiet=True)
    assert {it["view"] for s in SPLITS for it in only_pa[s]} == {"PA"}
    assert only_pa["prepare"]["summary"]["dropped"] == {"view AP not selected (views=['PA'])": 10}


def test_nih_bad_rows_name_file_and_line(tmp_path: Path, radiographs: list[Image.Image]) -> None:
    rows, test, train_val = nih_tree_rows()
    rows[1] = nih_row("00000001_001.png", "Cardiomegaly|Pneumonitis", 1)  # line 3
    rows[4] = "00000003_000.png,Hernia,0,3"  # line 6: truncated
    rows[6] = nih_row("00000004_000.png", "Hernia", 4) + "0.5"  # line 8: a value in the nameless column
    write_nih(tmp_path, ImageSource(radiographs), rows, test, train_val, csv_name="Data_Entry_2017.csv",
              missing=("00000010_001.png",))  # line 21
    out = str(tmp_path / "out.json")
    with pytest.raises(PrepareError, match=r"^Data_Entry_2017\.csv:3: unknown finding\(s\) \['Pneumonitis'\]"):
        prepare_nih_cxr14(str(tmp_path), out, quiet=True)
    datalist = prepare_nih_cxr14(str(tmp_path), out, on_error="skip", quiet=True)
    summary = datalist["prepare"]["summary"]
    assert summary["skipped_bad_input"] == {
        "unknown finding(s) ['Pneumonitis'] in 'Finding Labels'": 1,
        "4 fields, the header has 11 (malformed row)": 1, "12 fields, the header has 11 (malformed row)": 1,
        "image file not found": 1}
    assert summary["examples"]["4 fields, the header has 11 (malformed row)"] == "Data_Entry_2017.csv:6"
    assert summary["examples"]["12 fields, the header has 11 (malformed row)"] == "Data_Entry_2017.csv:8"
    assert summary["examples"]["image file not found"] == "Data_Entry_2017.csv:21"
    assert sum(len(datalist[s]) for s in SPLITS) == 20 - 4
