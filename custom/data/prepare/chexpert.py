"""CheXpert (Stanford ML Group): 14 observations labelled from reports (1 / 0 / -1 uncertain /
blank), and the CheXpert 5×200 zero-shot / retrieval protocol built from its training csv."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ...utils import as_bool, as_choice
from .common import (
    PrepareError,
    PrepareLog,
    Record,
    common_options,
    finalize,
    frontal_filter,
    merge_identical_images,
    patient_groups,
    read_csv,
    uncertain_value,
)

# the 14 observations, in the column order of train.csv / valid.csv
OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
# the five competition tasks: the classes of CheXpert 5×200, in this (int label) order
COMPETITION: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# folder names the archives unpack to (small = downsampled JPEGs, ~11 GB; full = ~440 GB)
_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_UNCERTAIN = ("ignore", "ones", "zeros")
_PATIENT = re.compile(r"(patient\d+)")
_COLUMNS = ("Path", "Frontal/Lateral", "AP/PA") + OBSERVATIONS

LAYOUT = """\
ROOT/                                  (or ROOT = the CheXpert-v1.0-small folder itself)
  CheXpert-v1.0-small/                 (or CheXpert-v1.0/, the full-resolution release)
    train.csv     columns: Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding,
                  Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, Lung Lesion, Edema,
                  Consolidation, Pneumonia, Atelectasis, Pneumothorax, Pleural Effusion,
                  Pleural Other, Fracture, Support Devices   (labels 1.0 / 0.0 / -1.0 / blank)
    valid.csv     same columns (the 234 radiologist-labelled validation images)
    train/patient00001/study1/view1_frontal.jpg   (Path = CheXpert-v1.0-small/train/...)
    valid/patient64541/study1/view1_frontal.jpg"""


# --------------------------------------------------------------------------------------------
# Reading the csv files
# --------------------------------------------------------------------------------------------


def locate_chexpert(root: str, needed: Sequence[str]) -> str:
    """The folder holding CheXpert's csv files: ``root`` itself or ``root/CheXpert-v1.0-small`` /
    ``root/CheXpert-v1.0`` (the first that has all of ``needed``), else a :class:`PrepareError`."""
    for folder in (root,) + tuple(os.path.join(root, name) for name in _FOLDERS):
        if all(os.path.isfile(os.path.join(folder, n)) for n in needed):
            return folder
    looked = ", ".join(os.path.join(f, n) for f in ("ROOT",) + tuple(f"ROOT/{x}" for x in _FOLDERS) for n in needed)
    raise PrepareError(f"{root}: CheXpert {' and '.join(needed)} not found (looked for {looked})\n"
                       f"Expected layout:\n{LAYOUT}")


def image_candidates(data_dir: str, path: str) -> list[str]:
    """Absolute candidates for a csv ``Path`` cell, most likely first.

    ``Path`` is relative to the folder that *contains* the CheXpert folder
    (``CheXpert-v1.0-small/train/...``); when that folder was renamed, or the cell has no prefix
    (``train/...``), the path is taken inside ``data_dir`` instead.
    """
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    found = [os.path.join(os.path.dirname(data_dir), *parts)]
    if len(parts) > 1:
        found.append(os.path.join(data_dir, *parts[1:]))
    found.append(os.path.join(data_dir, *parts))
    return list(dict.fromkeys(os.path.normpath(p) for p in found))


def _resolve_image(data_dir: str, root: str, cell: str, source: str, log: PrepareLog) -> str | None:
    """The image of a ``Path`` cell relative to ``root``, or None (counted by ``log.bad``)."""
    candidates = image_candidates(data_dir, cell)
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.relpath(candidate, root).replace(os.sep, "/")
    log.bad("image file not found", source, candidates[0])
    return None


def _view(row: dict[str, str], source: str, log: PrepareLog) -> str | None:
    """``AP``/``PA`` (the ``AP/PA`` cell, ``Frontal`` when blank) for frontals, ``L`` for laterals."""
    kind = row["Frontal/Lateral"].strip().lower()
    if kind == "frontal":
        return row["AP/PA"] or "Frontal"
    if kind == "lateral":
        return "L"
    log.bad("'Frontal/Lateral' must be Frontal or Lateral", source, f"found {row['Frontal/Lateral']!r}")
    return None


def _observations(row: dict[str, str], policy: str, source: str, log: PrepareLog) -> dict[str, int] | None:
    """The 14 observations as 1 / 0 / -1 (blank = not mentioned = 0; -1 mapped by ``policy``)."""
    labels: dict[str, int] = {}
    for name in OBSERVATIONS:
        try:
            labels[name] = uncertain_value(row[name], policy, source, name)
        except PrepareError:
            log.bad("label cell is not 1, 0, -1 or blank", source, f"column {name!r} has {row[name]!r}")
            return None
    return labels


def _read_rows(csv_path: str, data_dir: str, root: str, policy: str, log: PrepareLog) -> Iterator[Record]:
    """One :class:`Record` (image relative to ``root``, patient, view, 14 observations) per valid
    row of a CheXpert csv; broken rows go through ``log.bad``."""
    for source, row in read_csv(csv_path, _COLUMNS, log):
        if not row["Path"]:
            log.bad("empty 'Path' cell", source)
            continue
        patient = _PATIENT.search(row["Path"])
        if patient is None:
            log.bad("no patientNNNNN folder in 'Path'", source, row["Path"])
            continue
        view = _view(row, source, log)
        if view is None:
            continue
        labels = _observations(row, policy, source, log)
        if labels is None:
            continue
        image = _resolve_image(data_dir, root, row["Path"], source, log)
        if image is None:
            continue
        yield Record(image=image, patient_id=patient.group(1), source=source, labels=labels, view=view)


# --------------------------------------------------------------------------------------------
# CheXpert: 14 observations
# --------------------------------------------------------------------------------------------


def prepare_chexpert(
    root: str,
    out: str,
    seed: int = 0,
    val_frac: float = 0.1,
    test_frac: float | None = None,
    views: Any = "frontal",
    uncertain: str = "ignore",
    valid_as: str = "test",
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Datalist from CheXpert: labels = the 14 observations (1 / 0 / -1 uncertain) per image,
    top-level ``label_names`` in csv column order.

    Expected layout::

        ROOT/                                  (or ROOT = the CheXpert-v1.0-small folder itself)
          CheXpert-v1.0-small/                 (or CheXpert-v1.0/, the full-resolution release)
            train.csv     columns: Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding,
                          Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, Lung Lesion, Edema,
                          Consolidation, Pneumonia, Atelectasis, Pneumothorax, Pleural Effusion,
                          Pleural Other, Fracture, Support Devices   (labels 1.0 / 0.0 / -1.0 / blank)
            valid.csv     same columns (the 234 radiologist-labelled validation images)
            train/patient00001/study1/view1_frontal.jpg   (Path = CheXpert-v1.0-small/train/...)
            valid/patient64541/study1/view1_frontal.jpg

    ``Path`` is relative to the folder containing ``CheXpert-v1.0-small``; datalist paths are
    relative to ROOT whichever of the two folders ROOT is. The patient is the ``patientNNNNN``
    folder. ``view`` is the ``AP/PA`` cell for frontals and ``L`` for laterals. A blank label
    cell is "not mentioned" (0).

    Splits: ``valid.csv`` (labelled by radiologists) is the official split named by
    ``valid_as``. With ``valid_as=test`` (default: the hidden official test set is not
    public and papers report on valid.csv) the train.csv patients fill training and
    validation (``val_frac``). With ``valid_as=validation`` they fill training and test
    (``test_frac``, default 0.1); ``val_frac`` is then unused.

    Args:
        root: the dataset folder (see above). out: datalist JSON to write.
        seed, val_frac, test_frac: patient-grouped seeded split of the train.csv patients.
        views: ``frontal`` (AP/PA; drops laterals), ``all``, or a list of view names (``[PA]``).
        uncertain: what -1 (uncertain) becomes: ``ignore`` (kept as -1; losses and metrics
            mask it), ``ones`` (U-Ones) or ``zeros`` (U-Zeros).
        valid_as: ``test`` or ``validation``: the split valid.csv becomes.
        on_error: ``error`` (stop at the first bad row, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once.
    """
    policy = as_choice(uncertain, _UNCERTAIN, "uncertain")
    valid_split = as_choice(valid_as, ("test", "validation"), "valid_as")
    if valid_split == "test":
        if test_frac not in (None, "", "none", "None") and float(test_frac) != 0.0:
            raise ValueError("test_frac: valid.csv is the test split (valid_as=test); "
                             "test_frac applies only with --valid_as validation")
        fill_val, fill_test, open_splits = float(val_frac), 0.0, ("training", "validation")
    else:
        fill_test = 0.1 if test_frac in (None, "", "none", "None") else float(test_frac)
        fill_val, open_splits = 0.0, ("training", "test")
    log = PrepareLog("chexpert", on_error)
    if valid_split == "validation":
        log.note(f"valid.csv is the validation split; train.csv patients fill training and test "
                 f"(test_frac={fill_test}); val_frac unused")
    root = os.path.abspath(os.path.expanduser(str(root)))
    data_dir = locate_chexpert(root, ("train.csv", "valid.csv"))
    keep_view = frontal_filter(views)
    records: list[Record] = []
    for name, split in (("valid.csv", valid_split), ("train.csv", None)):
        for record in _read_rows(os.path.join(data_dir, name), data_dir, root, policy, log):
            if not keep_view(record.view):
                log.drop(f"view {record.view} not selected (views={views})", record.source)
                continue
            record.split = split
            records.append(record)
    return finalize(
        "chexpert", records, root=root, out=out, log=log, seed=seed, val_frac=fill_val, test_frac=fill_test,
        open_splits=open_splits, label_names=OBSERVATIONS, dedup=dedup, verify=verify,
        quiet=as_bool(quiet, "quiet"),
        options=common_options(seed, fill_val, fill_test, on_error, views=views, uncertain=policy,
                               valid_as=valid_split, dedup=dedup, verify=verify),
    )


# --------------------------------------------------------------------------------------------
# CheXpert 5×200
# --------------------------------------------------------------------------------------------


def exclusive_class(labels: dict[str, int]) -> int | None:
    """Index in :data:`COMPETITION` of the one competition class that is positive (1) while the
    other four are negative (0), else None (none or several positive, or an uncertain -1)."""
    values = [labels[name] for name in COMPETITION]
    if values.count(1) == 1 and values.count(0) == len(COMPETITION) - 1:
        return values.index(1)
    return None


def prepare_chexpert_5x200(
    root: str,
    out: str,
    seed: int = 0,
    per_class: int = 200,
    val_frac: float = 0.1,
    uncertain: str = "ignore",
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """The CheXpert 5×200 protocol (zero-shot classification / retrieval): ``per_class`` frontal
    training-csv images per competition class, each positive for exactly that class, as the
    test split; int labels 0..4 with ``label_names`` = Atelectasis, Cardiomegaly,
    Consolidation, Edema, Pleural Effusion.

    Expected layout::

        ROOT/                                  (or ROOT = the CheXpert-v1.0-small folder itself)
          CheXpert-v1.0-small/                 (or CheXpert-v1.0/)
            train.csv     columns: Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, ...,
                          Atelectasis, Pneumothorax, Pleural Effusion, ..., Support Devices
            train/patient00001/study1/view1_frontal.jpg   (Path = CheXpert-v1.0-small/train/...)

    Eligible images: frontal rows of train.csv whose five competition cells are 1 for exactly
    one class and 0 (or blank) for the other four, after the ``uncertain`` policy: with
    ``ignore`` (default, the strict protocol) any uncertain cell among the five makes the row
    ineligible; ``ones`` counts it as positive and ``zeros`` as negative. The other nine
    observations do not matter.

    Test: ``per_class`` eligible images per class drawn with ``seed`` (all of them, with a note,
    when a class has fewer). Every patient with a test image, and every patient who shares an
    identical image with one, is left out of training and validation. Training / validation:
    the eligible images of the other patients, split by patient (``val_frac``), so the whole
    datalist is one 5-class task. valid.csv is not used.

    Args:
        root: the dataset folder (see above). out: datalist JSON to write.
        seed: draws the test images and the training/validation split.
        per_class: test images per class (200 in the published protocol).
        val_frac: fraction of the remaining eligible images (by patient) for validation.
        uncertain: ``ignore`` | ``ones`` | ``zeros`` (see above).
        on_error: ``error`` (stop at the first bad row, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once.
    """
    policy = as_choice(uncertain, _UNCERTAIN, "uncertain")
    per_class = int(per_class)
    if per_class < 1:
        raise ValueError(f"per_class: expected a positive count, got {per_class}")
    log = PrepareLog("chexpert_5x200", on_error)
    root = os.path.abspath(os.path.expanduser(str(root)))
    data_dir = locate_chexpert(root, ("train.csv",))
    keep_view = frontal_filter("frontal")
    eligible: list[Record] = []
    for record in _read_rows(os.path.join(data_dir, "train.csv"), data_dir, root, policy, log):
        if not keep_view(record.view):
            log.drop(f"view {record.view} is not frontal", record.source)
            continue
        label = exclusive_class(record.labels)
        if label is None:
            log.drop("not positive for exactly one of the 5 competition classes", record.source)
            continue
        eligible.append(Record(image=record.image, patient_id=record.patient_id, source=record.source,
                               labels=label, view=record.view))
    if not eligible:
        raise PrepareError(f"prepare chexpert_5x200: no eligible image under {root} (dropped: {dict(log.dropped)}, "
                           f"skipped: {dict(log.skipped)})")

    # Draw among distinct images only, and exclude whole patient groups (patients linked by an
    # identical image count as one): finalize's own merging then never pulls a training patient
    # into the test split, and the test split keeps exactly the drawn images.
    distinct, linked = (merge_identical_images(eligible, root, PrepareLog("scratch", "skip"))
                        if as_bool(dedup, "dedup") else (eligible, []))
    groups = patient_groups(eligible, linked)
    rng = np.random.default_rng(int(seed))
    drawn: set[int] = set()  # ids of the drawn Record objects
    for label, name in enumerate(COMPETITION):
        pool = [r for r in distinct if r.labels == label]
        if len(pool) < per_class:
            log.note(f"{name}: only {len(pool)} eligible image(s), fewer than per_class={per_class}; "
                     "all of them are in the test split")
        for n in sorted(rng.choice(len(pool), size=min(per_class, len(pool)), replace=False)):
            drawn.add(id(pool[n]))
    test_groups = {groups[r.patient_id] for r in eligible if id(r) in drawn}
    records: list[Record] = []
    for record in eligible:
        if id(record) in drawn:
            record.split = "test"
            records.append(record)
        elif groups[record.patient_id] in test_groups:
            log.drop("patient has an image in the 5x200 test split (kept out of training/validation)",
                     record.source)
        else:
            records.append(record)
    return finalize(
        "chexpert_5x200", records, root=root, out=out, log=log, seed=seed, val_frac=val_frac, test_frac=0.0,
        open_splits=("training", "validation"), label_names=COMPETITION, dedup=dedup, verify=verify,
        quiet=as_bool(quiet, "quiet"),
        options=common_options(seed, val_frac, 0.0, on_error, per_class=per_class, uncertain=policy,
                               dedup=dedup, verify=verify),
    )
