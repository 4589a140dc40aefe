"""SIIM-ACR Pneumothorax Segmentation (Kaggle, original release): DICOM chest radiographs with
run-length pneumothorax masks, turned into PNG masks and a binary ``Pneumothorax`` label."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...utils import as_bool
from .common import (
    MaskWriter, PrepareError, PrepareLog, Record, common_options, finalize, find_file, index_files, mask_dir_for,
)
from .dicom_header import header_text, read_header
from .rle import NO_MASK, decode_rle, read_siim_rle

LABEL = "Pneumothorax"
TEST_FOLDER = "dicom-images-test"  # the challenge's unlabelled test images

LAYOUT = """\
ROOT/
  train-rle.csv     (or train-rle.csv.gz) header `ImageId, EncodedPixels`: ImageId = SOPInstanceUID,
                    EncodedPixels = -1 (no pneumothorax) or relative column-major run-length pairs;
                    several rows per image are OR-ed
  dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
                    (searched recursively; any sub-folder of ROOT is accepted)
  dicom-images-test/...   unlabelled: ignored"""


def prepare_siim_acr(
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
    """Datalist from the SIIM-ACR Pneumothorax layout: one item per training DICOM, labels
    ``{"Pneumothorax": 1|0}``, mask = the decoded run-length mask as a 0/255 PNG (an empty one for
    images without pneumothorax, so every item can train segmentation). No reports.

    Expected layout::

        ROOT/
          train-rle.csv     (or train-rle.csv.gz) header `ImageId, EncodedPixels`: ImageId =
                            SOPInstanceUID, EncodedPixels = -1 (no pneumothorax) or relative
                            column-major run-length pairs; several rows per image are OR-ed
          dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
                            (searched recursively; any sub-folder of ROOT is accepted)
          dicom-images-test/...   unlabelled: ignored

    The image id is the DICOM file's stem (its SOPInstanceUID). The patient (split unit) is the
    header's PatientID, or the image id when the header has none (counted in a note). Mask size
    is the header's Rows x Columns; masks are written as ``<ImageId>.png`` into ``mask_dir``
    (default ``<out folder>/siim_acr_masks``). The release has no official split: all items are
    split by patient with ``seed``. A csv row whose DICOM is missing, a malformed run-length
    string, or an image with both ``-1`` and run-length rows is bad input (``on_error``); a
    training DICOM without a csv row is dropped and counted.

    Args:
        root: the dataset folder. out: datalist JSON to write.
        seed, val_frac, test_frac: patient-grouped seeded split.
        mask_dir: where the PNG masks go (default: next to ``out``; the dataset root may be read-only).
        on_error: ``error`` (stop at the first bad row, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once.
    """
    log = PrepareLog("siim_acr", on_error)
    dedup, verify = as_bool(dedup, "dedup"), as_bool(verify, "verify")  # recorded as booleans
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not any(os.path.exists(os.path.join(root, n)) for n in ("train-rle.csv", "train-rle.csv.gz")) and \
            os.path.exists(os.path.join(root, "stage_2_train.csv")):
        raise PrepareError(
            f"{root}: found stage_2_train.csv (the re-released labels, absolute run-length format) but no "
            f"train-rle.csv; this preparer reads the original release.\nExpected layout:\n{LAYOUT}"
        )
    csv_path = find_file(root, ["train-rle.csv", "train-rle.csv.gz"], "the run-length label file", LAYOUT)
    labels = read_siim_rle(csv_path)
    dicoms = index_files(root, (".dcm",))
    if not dicoms:
        raise PrepareError(f"{root}: no .dcm files found\nExpected layout:\n{LAYOUT}")
    writer = MaskWriter(mask_dir_for(out, mask_dir, "siim_acr"))
    records: list[Record] = []
    no_patient_id = 0
    for image_id, rows in labels.items():
        first_source = rows[0][0]
        relative = dicoms.get(image_id)
        if relative is None:
            for source, _ in rows:
                log.bad("DICOM not found for the csv row", source, f"no {image_id}.dcm under {root}")
            continue
        texts = [text for _, text in rows]
        negative = [text.strip() == NO_MASK for text in texts]
        if any(negative) and not all(negative):
            log.bad("image has both -1 and run-length rows", first_source, image_id)
            continue
        try:
            header = read_header(os.path.join(root, relative))
        except ValueError as err:
            log.bad("DICOM header cannot be read", first_source, f"{relative}: {err}")
            continue
        height, width = int(header.Rows), int(header.Columns)
        mask = np.zeros((height, width), dtype=bool)
        try:
            for source, text in rows:
                mask |= decode_rle(text, height, width)
        except PrepareError as err:
            log.bad("malformed EncodedPixels", source, str(err))
            continue
        patient_id = header_text(header, "PatientID")
        if not patient_id:
            no_patient_id += 1
            patient_id = image_id
        records.append(
            Record(
                image=relative, patient_id=patient_id, source=first_source,
                labels={LABEL: int(mask.any())}, mask=writer.write(mask, f"{image_id}.png"),
                view=header_text(header, "ViewPosition") or None,
            )
        )
    unlabelled = set(dicoms) - set(labels)
    for image_id in sorted(unlabelled):
        relative = dicoms[image_id]
        if relative.replace(os.sep, "/").split("/")[0] == TEST_FOLDER:
            log.drop(f"{TEST_FOLDER} image (the challenge's unlabelled test set)", relative)
        else:
            log.drop(f"DICOM without a row in {os.path.basename(csv_path)}", relative)
    if no_patient_id:
        log.note(f"{no_patient_id} DICOM(s) without PatientID: their image id is the split unit")
    return finalize(
        "siim_acr", records, root=root, out=out, log=log, seed=seed, val_frac=val_frac, test_frac=test_frac,
        dedup=dedup, verify=verify, quiet=quiet,
        options=common_options(seed, val_frac, test_frac, on_error, mask_dir=mask_dir, dedup=dedup, verify=verify),
    )
