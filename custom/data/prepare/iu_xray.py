"""IU X-ray (Indiana University chest X-ray collection, OpenI): one XML report per study with
its frontal and lateral PNGs; report = FINDINGS + IMPRESSION."""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterator
from typing import Any

from ..reports import ReportParseError, clean_report, parse_iu_xml
from ...utils import as_bool
from .common import PrepareError, PrepareLog, Record, common_options, finalize, index_files

REPORTS_TGZ = "NLMCXR_reports.tgz"
REPORTS_DIR = "ecgen-radiology"
IMAGE_DIRS = ("NLMCXR_png", "images")

LAYOUT = """\
ROOT/
  NLMCXR_reports.tgz          the OpenI reports archive (read in place), or extracted:
  ecgen-radiology/*.xml       one report per study: <uId id="CXR1">, <AbstractText Label="FINDINGS">,
                              "IMPRESSION", "COMPARISON", "INDICATION", <MeSH><major>,
                              <parentImage id="CXR1_1_IM-0001-3001"> per image
  NLMCXR_png/*.png            NLMCXR_png.tgz extracted (or images/*.png, or the PNGs in ROOT itself),
                              named <parentImage id>.png, e.g. CXR1_1_IM-0001-3001.png"""


def _report_files(root: str) -> Iterator[tuple[str, bytes]]:
    """(source, XML bytes) of each report, from the archive (no extraction) or the extracted folder."""
    folder = os.path.join(root, REPORTS_DIR)
    archive = os.path.join(root, REPORTS_TGZ)
    if os.path.isdir(folder):
        for path in sorted(glob.glob(os.path.join(folder, "*.xml")), key=_numeric_name):
            with open(path, "rb") as f:
                yield f"{REPORTS_DIR}/{os.path.basename(path)}", f.read()
        return
    if not os.path.isfile(archive):
        raise PrepareError(f"{root}: neither {REPORTS_TGZ} nor {REPORTS_DIR}/ found\nExpected layout:\n{LAYOUT}")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".xml")]
            for member in sorted(members, key=lambda m: _numeric_name(m.name)):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield f"{REPORTS_TGZ}:{member.name}", handle.read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise PrepareError(f"{archive}: cannot read the archive ({err}); download it again") from None


def _numeric_name(path: str) -> tuple[int, str]:
    """Order ``2.xml`` before ``10.xml`` (reports are numbered), so runs list rows stably."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


def _image_index(root: str) -> tuple[dict[str, str], str]:
    """PNG stem → path relative to ``root``, and a description of where they were looked for."""
    folders = [os.path.join(root, d) for d in IMAGE_DIRS if os.path.isdir(os.path.join(root, d))]
    if not folders:
        # NLMCXR_png.tgz holds the PNGs without a folder: extracted in ROOT they lie there
        folders = [root]
    index: dict[str, str] = {}
    for folder in folders:
        for stem, rel in index_files(folder, [".png"]).items():
            index.setdefault(stem, os.path.relpath(os.path.join(folder, rel), root))
    where = ", ".join(os.path.relpath(f, root) + "/" for f in folders)
    return index, where


def prepare_iu_xray(
    root: str,
    out: str,
    seed: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Datalist from the IU X-ray (OpenI) reports and PNGs: one item per image, report = the
    study's FINDINGS + IMPRESSION with the ``XXXX`` placeholders removed.

    Expected layout::

        ROOT/
          NLMCXR_reports.tgz          the OpenI reports archive (read in place), or extracted:
          ecgen-radiology/*.xml       one report per study: <uId id="CXR1">,
                                      <AbstractText Label="FINDINGS"> / "IMPRESSION" /
                                      "COMPARISON" / "INDICATION", <MeSH><major>,
                                      <parentImage id="CXR1_1_IM-0001-3001"> per image
          NLMCXR_png/*.png            NLMCXR_png.tgz extracted (or images/*.png, or the PNGs in
                                      ROOT itself), named <parentImage id>.png

    Rules: a report whose findings and impression are empty once the placeholders are removed
    is dropped and counted, and so is a report that lists no image. An image the report lists
    that is not on disk is bad input (an error naming the report and image id, or counted with
    ``--on_error skip``). ``patient_id`` is the report id (``CXR1``): OpenI publishes one study
    per de-identified patient and no patient key, so studies of one person cannot be linked
    (identical image bytes still are). The XML does not record which image is frontal or
    lateral, so ``view`` is ``""`` and both views are kept. No class labels: the report's MeSH
    major terms go into the item as ``mesh`` (a list). No official split: the patients are
    split by ``seed``.

    Args:
        root: the dataset folder. out: datalist JSON to write.
        seed, val_frac, test_frac: patient-grouped seeded split.
        on_error: ``error`` (stop at the first bad report/image, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once. quiet: no summary.
    """
    log = PrepareLog("iu_xray", on_error)
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise PrepareError(f"{root}: not a folder\nExpected layout:\n{LAYOUT}")
    images, where = _image_index(root)
    if not images:
        raise PrepareError(f"{root}: no PNG images found (looked in {where})\nExpected layout:\n{LAYOUT}")
    records: list[Record] = []
    n_reports = 0
    for source, data in _report_files(root):
        n_reports += 1
        try:
            parsed = parse_iu_xml(data, source)
        except ReportParseError as err:
            log.bad("report XML cannot be parsed", source, str(err))
            continue
        if not parsed["images"]:
            log.drop("report lists no image (<parentImage>)", source)
            continue
        report = clean_report(f"{parsed['findings']}\n{parsed['impression']}")
        if not report:
            log.drop("report has no FINDINGS/IMPRESSION text once XXXX placeholders are removed", source)
            continue
        for image_id in parsed["images"]:
            item_source = f"{source}#{image_id}"
            if image_id not in images:
                log.bad("image listed in the report not found", item_source, f"no {image_id}.png under {where}")
                continue
            records.append(
                Record(
                    image=images[image_id], patient_id=str(parsed["report_id"]), source=item_source,
                    report=report, view="", extra={"mesh": list(parsed["mesh"])},
                )
            )
    if n_reports == 0:
        raise PrepareError(f"{root}: no report XML found in {REPORTS_TGZ} or {REPORTS_DIR}/\nExpected layout:\n{LAYOUT}")
    log.note("patient_id = report id (OpenI has one study per de-identified patient and no patient key)")
    log.note("view is not recorded in the XML: view '' for all images, frontal and lateral both kept")
    return finalize(
        "iu_xray", records, root=root, out=out, log=log, seed=seed, val_frac=val_frac, test_frac=test_frac,
        dedup=dedup, verify=verify, quiet=as_bool(quiet, "quiet"),
        options=common_options(seed, val_frac, test_frac, on_error, dedup=dedup, verify=verify),
    )
