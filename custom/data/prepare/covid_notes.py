"""COVID-19 chest X-rays with clinical notes and lung masks (the layout of ``../shared/data/cxr-notes``,
a subset of the ieee8023 covid-chestxray-dataset)."""

from __future__ import annotations

from typing import Any

from ..reports import clean_report
from .common import PrepareLog, Record, common_options, find_file, finalize, frontal_filter, read_csv

CLASS_NAMES = ("COVID-19", "Other pneumonia", "No Finding")
# findings that are not a pneumonia and not "No Finding": no class label (pretraining only)
_NOT_PNEUMONIA = {"ards"}

LAYOUT = """\
ROOT/
  metadata.csv      columns: patientid, offset, sex, age, finding, view, image, lung_mask,
                    clinical_notes, license, doi, url, source_filename
  images/*.png      grayscale radiographs (paths in `image`, relative to ROOT)
  masks/*.png       lung masks, 0/255, same size as the image (paths in `lung_mask`; may be empty)"""


def finding_class(finding: str) -> int | None:
    """``finding`` → class index in :data:`CLASS_NAMES`, or None (``todo`` or not a pneumonia).

    Combined findings that name COVID-19 (``"COVID-19, ARDS"``) count as COVID-19; every other
    aetiology (bacterial, viral, fungal, lipoid) is "Other pneumonia".
    """
    text = finding.strip()
    parts = {p.strip().lower() for p in text.split(",") if p.strip()}
    if not parts or parts == {"todo"}:
        return None
    if "covid-19" in parts:
        return 0
    if parts == {"no finding"}:
        return 2
    if parts <= _NOT_PNEUMONIA:
        return None
    return 1


def prepare_covid_notes(
    root: str,
    out: str,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    views: Any = "frontal",
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Datalist from the cxr-notes layout: report = clinical notes, mask = lung mask,
    labels = COVID-19 (0) | Other pneumonia (1) | No Finding (2) with top-level ``label_names``.

    Expected layout::

        ROOT/
          metadata.csv      columns: patientid, offset, sex, age, finding, view, image, lung_mask,
                            clinical_notes, license, doi, url, source_filename
          images/*.png      grayscale radiographs (paths in `image`, relative to ROOT)
          masks/*.png       lung masks, 0/255, same size as the image (`lung_mask`; may be empty)

    ``todo`` (not yet labelled) and ARDS-only rows have no class label: they serve pretraining
    only. Rows without notes keep no report (classification/segmentation only; pretraining skips
    them and says how many). The collection repeats some cases under two patient ids: identical
    image bytes are merged and those patients split together.

    Args:
        root: the dataset folder. out: datalist JSON to write.
        seed, val_frac, test_frac: patient-grouped seeded split (no official split here).
        views: ``frontal`` (PA/AP/AP Supine and unrecorded views; drops laterals), ``all``, or a
            list of view names.
        on_error: ``error`` (stop at the first bad row, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once.
    """
    log = PrepareLog("covid_notes", on_error)
    metadata = find_file(root, ["metadata.csv"], "metadata.csv", LAYOUT)
    keep_view = frontal_filter(views)
    records: list[Record] = []
    for source, row in read_csv(metadata, ["patientid", "finding", "view", "image", "lung_mask", "clinical_notes"]):
        if not row["image"]:
            log.bad("empty 'image' cell", source)
            continue
        if not row["patientid"]:
            log.bad("empty 'patientid' cell", source)
            continue
        if not keep_view(row["view"]):
            log.drop(f"view {row['view'] or 'unrecorded'} not selected (views={views})", source)
            continue
        notes = clean_report(row["clinical_notes"])
        if not notes:
            log.flag("no clinical notes: no report (not used for pretraining)", source)
        label = finding_class(row["finding"])
        if label is None:
            log.flag(f"finding {row['finding']!r}: no class label (pretraining only)", source)
        records.append(
            Record(
                image=row["image"], patient_id=row["patientid"], source=source, report=notes or None,
                labels=label, mask=row["lung_mask"] or None, view=row["view"] or "",
                extra={"finding": row["finding"]},
            )
        )
    return finalize(
        "covid_notes", records, root=root, out=out, log=log, seed=seed, val_frac=val_frac, test_frac=test_frac,
        label_names=CLASS_NAMES, dedup=dedup, verify=verify, quiet=quiet,
        options=common_options(seed, val_frac, test_frac, on_error, views=views, dedup=dedup, verify=verify),
    )
