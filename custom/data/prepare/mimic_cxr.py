"""MIMIC-CXR-JPG 2.0.0 images with the MIMIC-CXR free-text reports: report = FINDINGS +
IMPRESSION, official split, CheXpert-labeler labels."""

from __future__ import annotations

import os
from typing import Any

from ..reports import findings_impression
from ..textfiles import read_text
from ...utils import as_bool, as_choice, as_optional_path
from .common import (
    PrepareError, PrepareLog, Record, common_options, find_file, finalize, frontal_filter, read_csv, uncertain_value,
)

CHEXPERT_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
OFFICIAL_SPLITS = {"train": "training", "validate": "validation", "test": "test"}
FRONTAL_VIEWS = ("PA", "AP")

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"

LAYOUT = """\
ROOT/                                  MIMIC-CXR-JPG 2.0.0
  mimic-cxr-2.0.0-split.csv.gz         dicom_id, study_id, subject_id, split (train/validate/test)
  mimic-cxr-2.0.0-metadata.csv.gz      dicom_id, subject_id, study_id, PerformedProcedureStepDescription,
                                       ViewPosition, Rows, Columns, StudyDate, StudyTime, ...
  mimic-cxr-2.0.0-chexpert.csv.gz      optional: subject_id, study_id + the 14 CheXpert labels (1.0/0.0/-1.0/blank)
  files/p10/p10000032/s50414267/<dicom_id>.jpg
REPORTS_ROOT/ (default ROOT)           mimic-cxr-reports.zip from MIMIC-CXR 2.0.0, extracted
  files/p10/p10000032/s50414267.txt    (or ROOT/mimic-cxr-reports/files/...)"""


def _split_table(path: str, log: PrepareLog) -> dict[str, tuple[str, str, str]]:
    """dicom_id → (official split, subject_id, study_id) from the split csv."""
    table: dict[str, tuple[str, str, str]] = {}
    for source, row in read_csv(path, ["dicom_id", "study_id", "subject_id", "split"]):
        split = OFFICIAL_SPLITS.get(row["split"].lower())
        if split is None:
            log.bad(f"split {row['split']!r} is not one of {sorted(OFFICIAL_SPLITS)}", source)
            continue
        if not row["dicom_id"]:
            log.bad("empty 'dicom_id' cell", source)
            continue
        table[row["dicom_id"]] = (split, row["subject_id"], row["study_id"])
    return table


def _label_table(path: str, policy: str) -> dict[tuple[str, str], dict[str, int]]:
    """(subject_id, study_id) → {class: 1|0|-1} from the CheXpert-labeler csv (one row per study)."""
    table: dict[tuple[str, str], dict[str, int]] = {}
    for source, row in read_csv(path, ["subject_id", "study_id", *CHEXPERT_CLASSES]):
        labels = {name: uncertain_value(row[name], policy, source, name) for name in CHEXPERT_CLASSES}
        table[(row["subject_id"], row["study_id"])] = labels
    return table


def _report_bases(root: str, reports_root: str | None) -> list[str]:
    """Folders that may hold ``pXX/pSUBJECT/sSTUDY.txt``, in the order they are tried."""
    base = reports_root or root
    candidates = [os.path.join(base, "files"), os.path.join(base, "mimic-cxr-reports", "files")]
    if reports_root:
        candidates.append(reports_root)  # REPORTS_ROOT given as the files/ folder itself
    found = [c for c in candidates if os.path.isdir(c)]
    if not found:
        raise PrepareError(f"{base}: no reports folder (looked for {', '.join(candidates)})\nExpected layout:\n{LAYOUT}")
    return found


def prepare_mimic_cxr(
    root: str,
    out: str,
    reports_root: str | None = None,
    views: Any = "frontal",
    seed: int = 0,
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
    uncertain: str = "ignore",
    labels: bool = True,
) -> dict[str, Any]:
    """Datalist from MIMIC-CXR-JPG 2.0.0 and the MIMIC-CXR reports: one item per image, report =
    the study's FINDINGS + IMPRESSION, the official train/validate/test split, CheXpert labels.

    Expected layout::

        ROOT/                                  MIMIC-CXR-JPG 2.0.0
          mimic-cxr-2.0.0-split.csv.gz         dicom_id, study_id, subject_id, split
                                               (train / validate / test)
          mimic-cxr-2.0.0-metadata.csv.gz      dicom_id, subject_id, study_id,
                                               PerformedProcedureStepDescription, ViewPosition,
                                               Rows, Columns, StudyDate, StudyTime,
                                               ProcedureCodeSequence_CodeMeaning,
                                               ViewCodeSequence_CodeMeaning,
                                               PatientOrientationCodeSequence_CodeMeaning
          mimic-cxr-2.0.0-chexpert.csv.gz      optional: subject_id, study_id, Atelectasis,
                                               Cardiomegaly, ..., Support Devices
                                               (1.0 / 0.0 / -1.0 uncertain / blank)
          files/p10/p10000032/s50414267/<dicom_id>.jpg
        REPORTS_ROOT/ (default ROOT)           mimic-cxr-reports.zip (MIMIC-CXR 2.0.0) extracted
          files/p10/p10000032/s50414267.txt    (or ROOT/mimic-cxr-reports/files/...)

    Rules: the official split is kept entirely (train → training, validate → validation,
    test → test; nothing is re-split). An image whose ``dicom_id`` is not in the split csv, or
    whose subject/study differ there, or whose study has no report file, is bad input (an error
    naming the metadata row, or counted with ``--on_error skip``). A report without a FINDINGS,
    IMPRESSION (or CONCLUSION) or FINDINGS AND IMPRESSION section is dropped and counted: the
    other sections (indication, history, comparison) do not describe the image. ``views=frontal``
    keeps exactly ``ViewPosition`` PA and AP; lateral, oblique, decubitus, lordotic (AP AXIAL)
    and images whose ``ViewPosition`` is not recorded (a few percent of MIMIC, laterals and
    frontals) are dropped and counted, since an unrecorded view there cannot be assumed
    frontal. ``labels`` are the study's CheXpert-labeler labels (blank = 0; uncertain by
    ``uncertain``); a study absent from that csv is kept without labels and counted.
    ``patient_id`` is ``subject_id``; items carry ``study_id``.

    Args:
        root: MIMIC-CXR-JPG folder. out: datalist JSON to write.
        reports_root: folder holding the reports' ``files/`` (default: ``root``).
        views: ``frontal`` (PA/AP), ``all``, or a list of ``ViewPosition`` values.
        seed: recorded only (the split is official).
        on_error: ``error`` (stop at the first bad row, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once. quiet: no summary.
        uncertain: uncertain (-1) labels kept as -1 (``ignore``: masked in losses and metrics),
            or mapped to 1 (``ones``) or 0 (``zeros``).
        labels: attach the CheXpert labels (when the csv is there).
    """
    log = PrepareLog("mimic_cxr", on_error)
    policy = as_choice(uncertain, ("ignore", "ones", "zeros"), "uncertain")
    use_labels = as_bool(labels, "labels")
    root = os.path.abspath(os.path.expanduser(str(root)))
    reports_root = as_optional_path(reports_root)
    if reports_root:
        reports_root = os.path.abspath(os.path.expanduser(reports_root))
    split_csv = find_file(root, [SPLIT_CSV, SPLIT_CSV[:-3]], "the split csv", LAYOUT)
    metadata_csv = find_file(root, [METADATA_CSV, METADATA_CSV[:-3]], "the metadata csv", LAYOUT)
    label_table: dict[tuple[str, str], dict[str, int]] | None = None
    if use_labels:
        chexpert_csv = next((os.path.join(root, n) for n in (CHEXPERT_CSV, CHEXPERT_CSV[:-3])
                             if os.path.isfile(os.path.join(root, n))), None)
        if chexpert_csv is not None:
            label_table = _label_table(chexpert_csv, policy)
        else:
            log.note(f"{CHEXPERT_CSV} not found: no labels")
    if isinstance(views, str) and views.strip().lower() == "frontal":
        keep_view = frontal_filter(FRONTAL_VIEWS)  # exact PA/AP: unrecorded views are dropped in MIMIC
    else:
        keep_view = frontal_filter(views)
    report_bases = _report_bases(root, reports_root)
    split_of = _split_table(split_csv, log)
    split_name = os.path.basename(split_csv)
    # (subject, study) → (findings + impression, "") or (None, why the report is unavailable)
    reports: dict[tuple[str, str], tuple[str | None, str]] = {}

    def study_report(subject: str, study: str) -> tuple[str | None, str]:
        key = (subject, study)
        if key not in reports:
            relative = os.path.join(f"p{subject[:2]}", f"p{subject}", f"s{study}.txt")
            paths = [os.path.join(base, relative) for base in report_bases]
            path = next((p for p in paths if os.path.isfile(p)), None)
            if path is None:
                reports[key] = (None, "report file not found: " + " or ".join(paths))
            else:
                try:
                    reports[key] = (findings_impression(read_text(path, "the report")), "")
                except (OSError, ValueError) as err:  # ValueError: not UTF-8 (named, with the encoding)
                    reports[key] = (None, f"report file cannot be read: {err}")
        return reports[key]

    records: list[Record] = []
    for source, row in read_csv(metadata_csv, ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
        dicom, subject, study = row["dicom_id"], row["subject_id"], row["study_id"]
        if not dicom or not subject.isdigit() or not study.isdigit():
            log.bad("empty dicom_id or non-numeric subject_id/study_id", source,
                    f"dicom_id={dicom!r}, subject_id={subject!r}, study_id={study!r}")
            continue
        official = split_of.get(dicom)
        if official is None:
            log.bad(f"dicom_id {dicom} not in {split_name}", source)
            continue
        if official[1:] != (subject, study):
            log.bad(f"dicom_id {dicom}: subject/study differ from {split_name}", source,
                    f"metadata {subject}/{study}, split csv {official[1]}/{official[2]}")
            continue
        view = row["ViewPosition"]
        if not keep_view(view):
            log.drop(f"ViewPosition {view} not selected (views={views})" if view
                     else f"ViewPosition not recorded (views={views} keeps recorded views only)", source)
            continue
        report, problem = study_report(subject, study)
        if report is None:
            reason, _, detail = problem.partition(": ")
            log.bad(reason, source, detail)
            continue
        if not report:
            log.drop("no FINDINGS/IMPRESSION section", source)
            continue
        item_labels = None
        if label_table is not None:
            item_labels = label_table.get((subject, study))
            if item_labels is None:
                log.flag(f"study not in {CHEXPERT_CSV}: no labels", source)
        records.append(
            Record(
                image=os.path.join("files", f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{dicom}.jpg"),
                patient_id=subject, source=source, report=report,
                labels=dict(item_labels) if item_labels is not None else None,
                view=view, split=official[0], extra={"study_id": study},
            )
        )
    log.note("official MIMIC-CXR split kept (train/validate/test); nothing re-split")
    return finalize(
        "mimic_cxr", records, root=root, out=out, log=log, seed=seed, val_frac=0.0, test_frac=0.0,
        open_splits=(), label_names=CHEXPERT_CLASSES if label_table is not None else None,
        dedup=dedup, verify=verify, quiet=as_bool(quiet, "quiet"),
        options=common_options(seed, 0.0, 0.0, on_error, reports_root=reports_root, views=views, dedup=dedup,
                               verify=verify, uncertain=policy, labels=use_labels),
    )
