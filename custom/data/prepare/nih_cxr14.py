"""NIH ChestX-ray14: 112,120 frontal radiographs with 14 findings text-mined from reports."""

from __future__ import annotations

import os
from typing import Any

from ...utils import as_bool
from .common import PrepareLog, Record, common_options, find_file, finalize, frontal_filter, open_text, read_csv

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")

LAYOUT = """\
ROOT/
  Data_Entry_2017.csv   (or Data_Entry_2017_v2020.csv) columns: Image Index, Finding Labels,
                        Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
                        OriginalImage[Width,Height], OriginalImagePixelSpacing[x,y]
                        (Finding Labels: findings joined by '|', or 'No Finding')
  train_val_list.txt    official train+validation image names, one per line
  test_list.txt         official test image names, one per line
  images/00000001_000.png ...                  (or images_001/images/ ... images_012/images/)"""


def index_by_name(root: str, suffix: str = ".png") -> tuple[dict[str, str], int]:
    """File name → path relative to ``root`` for every ``*suffix`` under ``root`` (folders walked
    in sorted order, so the first of two same-named files is always the same), and how many
    names were found twice."""
    found: dict[str, str] = {}
    repeated = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(suffix):
                if name in found:
                    repeated += 1
                    continue
                found[name] = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
    return found, repeated


def read_name_list(path: str) -> dict[str, str]:
    """Image name → ``"file.txt:LINE"`` for a one-name-per-line list (blank lines skipped)."""
    names: dict[str, str] = {}
    with open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            name = line.strip()
            if name:
                names.setdefault(name, f"{os.path.basename(path)}:{line_number}")
    return names


def finding_labels(cell: str) -> tuple[dict[str, int] | None, str | None]:
    """``"Cardiomegaly|Effusion"`` → (14 findings as 1/0, None); ``"No Finding"`` → all 0.
    On an unknown name, an empty cell, or "No Finding" with findings: (None, what is wrong)."""
    names = [n.strip() for n in cell.split("|") if n.strip()]
    if not names:
        return None, "empty 'Finding Labels' cell"
    if NO_FINDING in names:
        if len(names) > 1:
            return None, f"'No Finding' together with findings in {cell!r}"
        return dict.fromkeys(FINDINGS, 0), None
    unknown = [n for n in names if n not in FINDINGS]
    if unknown:
        return None, f"unknown finding(s) {unknown} in 'Finding Labels'"
    present = set(names)
    return {name: int(name in present) for name in FINDINGS}, None


def prepare_nih_cxr14(
    root: str,
    out: str,
    seed: int = 0,
    val_frac: float = 0.1,
    views: Any = "frontal",
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Datalist from NIH ChestX-ray14: labels = the 14 findings (1/0) per image, top-level
    ``label_names``; ``view`` = PA or AP.

    Expected layout::

        ROOT/
          Data_Entry_2017.csv   (or Data_Entry_2017_v2020.csv) columns: Image Index, Finding Labels,
                                Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
                                OriginalImage[Width,Height], OriginalImagePixelSpacing[x,y]
                                (Finding Labels: findings joined by '|', or 'No Finding')
          train_val_list.txt    official train+validation image names, one per line
          test_list.txt         official test image names, one per line
          images/00000001_000.png ...                  (or images_001/images/ ... images_012/images/)

    Images are found by file name anywhere under ROOT. The csv's bracketed header names hold
    unquoted commas and some releases end the header with a comma; only the four columns used
    are required and a nameless trailing column is tolerated. ``Finding Labels`` names from the
    14 findings joined by ``|``; ``No Finding`` means all 0.

    Splits: test_list.txt is the test split (as published, patient-disjoint from the rest);
    the train_val_list.txt patients fill training and validation (``val_frac``). An image in
    neither list joins the training/validation pool (a note counts them).

    Args:
        root: the dataset folder (see above). out: datalist JSON to write.
        seed, val_frac: patient-grouped seeded split of the train_val list.
        views: ``frontal`` (PA/AP: every NIH image), ``all``, or a list of view names (``[PA]``).
        on_error: ``error`` (stop at the first bad row, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once.
    """
    log = PrepareLog("nih_cxr14", on_error)
    root = os.path.abspath(os.path.expanduser(str(root)))
    entries = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "the Data_Entry csv", LAYOUT)
    test_names = read_name_list(find_file(root, ["test_list.txt"], "test_list.txt", LAYOUT))
    trainval_names = read_name_list(find_file(root, ["train_val_list.txt"], "train_val_list.txt", LAYOUT))
    both = sorted(set(test_names) & set(trainval_names))
    if both:
        log.note(f"{len(both)} image(s) in both test_list.txt and train_val_list.txt (e.g. {both[0]}): kept in test")
    images, repeated = index_by_name(root)
    if repeated:
        log.note(f"{repeated} image name(s) found in two folders under ROOT: the first (sorted) is used")
    keep_view = frontal_filter(views)
    records: list[Record] = []
    seen: set[str] = set()
    unlisted = 0
    for source, row in read_csv(entries, _COLUMNS, log):
        name = row["Image Index"]
        if not name:
            log.bad("empty 'Image Index' cell", source)
            continue
        if not row["Patient ID"]:
            log.bad("empty 'Patient ID' cell", source)
            continue
        labels, problem = finding_labels(row["Finding Labels"])
        if labels is None:
            log.bad(problem, source, f"expected names from {list(FINDINGS)} joined by '|', or {NO_FINDING!r}")
            continue
        if name in seen:
            log.drop("image listed twice (first row kept)", source)
            continue
        seen.add(name)
        if not keep_view(row["View Position"]):
            log.drop(f"view {row['View Position'] or 'unrecorded'} not selected (views={views})", source)
            continue
        if name not in images:
            log.bad("image file not found", source, f"no file named {name} under {root}")
            continue
        split = "test" if name in test_names else None
        unlisted += name not in test_names and name not in trainval_names
        # "Patient ID" is an integer in the csv (1) and zero-padded in the file names (00000001)
        patient = (row["Patient ID"].lstrip("0") or "0") if row["Patient ID"].isdigit() else row["Patient ID"]
        records.append(Record(image=images[name], patient_id=patient, source=source, labels=labels,
                              view=row["View Position"], split=split))
    if unlisted:
        log.note(f"{unlisted} image(s) in neither test_list.txt nor train_val_list.txt: "
                 "they join the training/validation pool")
    return finalize(
        "nih_cxr14", records, root=root, out=out, log=log, seed=seed, val_frac=val_frac, test_frac=0.0,
        open_splits=("training", "validation"), label_names=FINDINGS, dedup=dedup, verify=verify,
        quiet=as_bool(quiet, "quiet"),
        options=common_options(seed, val_frac, 0.0, on_error, views=views, dedup=dedup, verify=verify),
    )
