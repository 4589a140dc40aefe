"""RSNA Pneumonia Detection Challenge (Kaggle, stage 2): DICOM chest radiographs with lung-opacity
boxes, turned into a binary ``Pneumonia`` label and box masks (PNG)."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from ...utils import as_bool
from .common import (
    MaskWriter, PrepareLog, Record, common_options, finalize, find_file, index_files, mask_dir_for, read_csv,
)
from .dicom_header import header_text, read_header

LABEL = "Pneumonia"
CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
TEST_FOLDER = "stage_2_test_images"  # the challenge's unlabelled test images
BOX_COLUMNS = ("x", "y", "width", "height")

LAYOUT = """\
ROOT/
  stage_2_train_labels.csv          columns: patientId, x, y, width, height, Target
                                    (one row per box; Target 0 rows have empty box cells)
  stage_2_detailed_class_info.csv   optional; columns: patientId, class
                                    (Lung Opacity | No Lung Opacity / Not Normal | Normal)
  stage_2_train_images/<patientId>.dcm   (searched recursively; any sub-folder of ROOT is accepted)
  stage_2_test_images/...           unlabelled: ignored"""


def box_slices(x: float, y: float, width: float, height: float, rows: int, columns: int) -> tuple[slice, slice, bool]:
    """Pixel rows and columns covered by a box, clipped to a ``rows x columns`` image.

    ``x`` is the column and ``y`` the row of the box's top-left corner, in pixels; the box covers
    the continuous region ``[x, x + width) x [y, y + height)``. Edges are rounded to the nearest
    pixel boundary (halves up), so integer boxes (all of the released ones) cover exactly
    ``width * height`` pixels before clipping.

    Returns:
        ``(row_slice, column_slice, clipped)``; a slice is empty when the box lies outside the image.
    """
    def edge(value: float) -> int:
        return int(math.floor(value + 0.5))

    r0, r1 = edge(y), edge(y + height)
    c0, c1 = edge(x), edge(x + width)
    clipped = r0 < 0 or c0 < 0 or r1 > rows or c1 > columns
    r0, r1 = min(max(r0, 0), rows), min(max(r1, 0), rows)
    c0, c1 = min(max(c0, 0), columns), min(max(c1, 0), columns)
    return slice(r0, r1), slice(c0, c1), clipped


def parse_box(row: dict[str, str]) -> tuple[int, tuple[float, float, float, float] | None, str]:
    """``(target, box, problem)`` of one labels row; ``problem`` is "" for a consistent row, else
    says what is wrong (non-numeric cell, Target 1 without a box, Target 0 with a box, ...)."""
    text = row["Target"].strip()
    try:
        number = float(text)
    except ValueError:
        return -1, None, f"Target is {text!r}; expected 0 or 1"
    if number not in (0.0, 1.0):
        return -1, None, f"Target is {text!r}; expected 0 or 1"
    target = int(number)
    cells = [row[c].strip() for c in BOX_COLUMNS]
    if target == 0:
        if any(cells):
            return 0, None, f"Target 0 row with box cells {cells}"
        return 0, None, ""
    if not any(cells):
        return 1, None, "Target 1 row without a box"
    try:
        values = tuple(float(c) for c in cells)
    except ValueError:
        return 1, None, f"non-numeric box cell(s) in {dict(zip(BOX_COLUMNS, cells))}"
    if not all(math.isfinite(v) for v in values):
        return 1, None, f"non-finite box value(s) in {dict(zip(BOX_COLUMNS, cells))}"
    if values[2] <= 0 or values[3] <= 0:
        return 1, None, f"box width/height must be > 0, got {values[2]} x {values[3]}"
    return 1, values, ""


def prepare_rsna_pneumonia(
    root: str,
    out: str,
    seed: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    mask_dir: str | None = None,
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Datalist from the RSNA Pneumonia Detection Challenge (stage 2) layout: one item per
    training DICOM, labels ``{"Pneumonia": Target}``, mask = the union of its lung-opacity boxes
    as a 0/255 PNG (an empty one for negatives). No reports.

    Expected layout::

        ROOT/
          stage_2_train_labels.csv          columns: patientId, x, y, width, height, Target
                                            (one row per box; Target 0 rows have empty box cells)
          stage_2_detailed_class_info.csv   optional; columns: patientId, class
                                            (Lung Opacity | No Lung Opacity / Not Normal | Normal)
          stage_2_train_images/<patientId>.dcm   (searched recursively; any sub-folder is accepted)
          stage_2_test_images/...           unlabelled: ignored

    In this release ``patientId`` identifies one image, not a person (each id has exactly one
    DICOM): it is the split unit, so repeat radiographs of one person cannot be kept together.
    Boxes: ``x`` is the column and ``y`` the row of the top-left corner, in pixels; a box fills
    rows ``y .. y+height`` and columns ``x .. x+width`` (end exclusive, edges rounded to the
    nearest pixel, clipped to the image; clipped boxes are counted). The mask size is the DICOM
    header's Rows x Columns; masks go to ``mask_dir`` as ``<patientId>.png`` (default
    ``<out folder>/rsna_pneumonia_masks``). The detailed class, when its file is there, is kept
    as the item's ``class``. Bad input (``on_error``): a non-numeric cell, Target 1 without a box,
    Target 0 with one, both targets for one image, a missing DICOM. No official split (the test
    images have no labels): all items are split with ``seed``.

    Args:
        root: the dataset folder. out: datalist JSON to write.
        seed, val_frac, test_frac: seeded split by patientId.
        mask_dir: where the PNG masks go (default: next to ``out``; the dataset root may be read-only).
        on_error: ``error`` (stop at the first bad row, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once.
    """
    log = PrepareLog("rsna_pneumonia", on_error)
    dedup, verify = as_bool(dedup, "dedup"), as_bool(verify, "verify")  # recorded as booleans
    root = os.path.abspath(os.path.expanduser(str(root)))
    labels_path = find_file(root, ["stage_2_train_labels.csv", "stage_2_train_labels.csv.gz"],
                            "the box label file", LAYOUT)
    rows_of: dict[str, list[tuple[str, dict[str, str]]]] = defaultdict(list)
    for source, row in read_csv(labels_path, ["patientId", *BOX_COLUMNS, "Target"]):
        if not row["patientId"]:
            log.bad("empty patientId cell", source)
            continue
        rows_of[row["patientId"]].append((source, row))
    classes = _read_classes(root, log)
    dicoms = index_files(root, (".dcm",))
    writer = MaskWriter(mask_dir_for(out, mask_dir, "rsna_pneumonia"))
    records: list[Record] = []
    for patient_id, rows in rows_of.items():
        first_source = rows[0][0]
        relative = dicoms.get(patient_id)
        if relative is None:
            for source, _ in rows:
                log.bad("DICOM not found for the labels row", source, f"no {patient_id}.dcm under {root}")
            continue
        parsed = [(source, *parse_box(row)) for source, row in rows]
        problem = next(((s, p) for s, _, _, p in parsed if p), None)
        if problem is not None:
            log.bad("inconsistent labels row", *problem)
            continue
        targets = {target for _, target, _, _ in parsed}
        if len(targets) > 1:
            log.bad("image has both Target 0 and Target 1 rows", first_source, patient_id)
            continue
        try:
            header = read_header(os.path.join(root, relative))
        except ValueError as err:
            log.bad("DICOM header cannot be read", first_source, f"{relative}: {err}")
            continue
        height, width = int(header.Rows), int(header.Columns)
        mask = np.zeros((height, width), dtype=bool)
        outside = None
        for source, _, box, _ in parsed:
            if box is None:
                continue
            row_slice, column_slice, clipped = box_slices(*box, height, width)
            if row_slice.start == row_slice.stop or column_slice.start == column_slice.stop:
                outside = source
                break
            if clipped:
                log.flag("box extends past the image (clipped)", source)
            mask[row_slice, column_slice] = True
        if outside is not None:
            log.bad("box lies outside the image", outside, f"{height}x{width} image {relative}")
            continue
        target = targets.pop()
        extra: dict[str, Any] = {}
        if classes is not None:
            found = classes.get(patient_id)
            if found is None:
                log.flag("no row in stage_2_detailed_class_info.csv", first_source)
            elif len(found) > 1:
                log.flag("conflicting classes in stage_2_detailed_class_info.csv (class omitted)", first_source)
            else:
                (name,) = found
                if (name == CLASSES[0]) != (target == 1):
                    log.flag("detailed class disagrees with Target (both kept)", first_source)
                extra["class"] = name
        records.append(
            Record(
                image=relative, patient_id=patient_id, source=first_source, labels={LABEL: target},
                mask=writer.write(mask, f"{patient_id}.png"), view=header_text(header, "ViewPosition") or None,
                extra=extra,
            )
        )
    for image_id in sorted(set(dicoms) - set(rows_of)):
        relative = dicoms[image_id]
        if relative.replace(os.sep, "/").split("/")[0] == TEST_FOLDER:
            log.drop(f"{TEST_FOLDER} image (the challenge's unlabelled test set)", relative)
        else:
            log.drop(f"DICOM without a row in {os.path.basename(labels_path)}", relative)
    log.note("patientId identifies one image in this release (not a person): it is the split unit")
    return finalize(
        "rsna_pneumonia", records, root=root, out=out, log=log, seed=seed, val_frac=val_frac, test_frac=test_frac,
        dedup=dedup, verify=verify, quiet=quiet,
        options=common_options(seed, val_frac, test_frac, on_error, mask_dir=mask_dir, dedup=dedup, verify=verify),
    )


def _read_classes(root: str, log: PrepareLog) -> dict[str, set[str]] | None:
    """``patientId → {class}`` from the optional detailed class file (None when it is absent).
    The file repeats a patient's class once per box row; a class outside :data:`CLASSES` is bad input."""
    for name in ("stage_2_detailed_class_info.csv", "stage_2_detailed_class_info.csv.gz"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            break
    else:
        return None
    classes: dict[str, set[str]] = defaultdict(set)
    for source, row in read_csv(path, ["patientId", "class"]):
        if row["class"] not in CLASSES:
            log.bad("unknown class", source, f"{row['class']!r}; expected one of {list(CLASSES)}")
            continue
        classes[row["patientId"]].add(row["class"])
    return dict(classes)
