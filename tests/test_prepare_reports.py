"""Report text and the report datasets: MIMIC-style sections, the real IU X-ray XML reports,
``prepare iu_xray`` / ``prepare mimic_cxr`` on tiny native trees, and fuzzing of the parsers."""

from __future__ import annotations

import csv
import functools
import gzip
import os
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import SHARED_DATA
from custom.datasets.common import PrepareError
from custom.datasets.iu_xray import prepare_iu_xray
from custom.datasets.mimic_cxr import CHEXPERT_CLASSES, prepare_mimic_cxr
from custom.reports import ReportParseError, clean_report, findings_impression, parse_iu_xml, report_sections

IU_TGZ = os.path.join(SHARED_DATA, "iu-reports", "NLMCXR_reports.tgz")
NOTES_IMAGES = os.path.join(SHARED_DATA, "cxr-notes", "images")

needs_iu = pytest.mark.skipif(not os.path.isfile(IU_TGZ), reason="../shared/data/iu-reports not available")


@pytest.fixture(scope="module")
def iu_reports() -> dict[str, dict]:
    """Every report of the real archive, parsed once: file name → parsed dict."""
    parsed = {}
    with tarfile.open(IU_TGZ) as tar:
        for member in tar.getmembers():
            if member.isfile():
                parsed[member.name] = parse_iu_xml(tar.extractfile(member).read(), member.name)
    return parsed


def _iu_report(parsed: dict) -> str:
    return clean_report(f"{parsed['findings']}\n{parsed['impression']}")


# ---------------------------------------------------------------------------------------------
# IU X-ray XML (real archive)
# ---------------------------------------------------------------------------------------------


@needs_iu
def test_iu_archive_counts(iu_reports):
    assert len(iu_reports) == 3955
    assert sum(bool(p["findings"]) for p in iu_reports.values()) == 3425
    assert sum(bool(p["impression"]) for p in iu_reports.values()) == 3921
    reports = [_iu_report(p) for p in iu_reports.values()]
    assert sum(bool(r) for r in reports) == 3927
    assert sum(not p["images"] for p in iu_reports.values()) == 104
    assert sum(len(p["images"]) for p in iu_reports.values()) == 7470
    # no placeholder survives, including those glued to a word ("4XXXX", "XXXXPM")
    assert not [r for r in reports if "XXXX" in r]
    assert all(p["report_id"] == "CXR" + name.rsplit("/", 1)[1][:-4] for name, p in iu_reports.items())


@needs_iu
def test_iu_known_reports(iu_reports):
    cxr1 = iu_reports["ecgen-radiology/1.xml"]
    assert cxr1["report_id"] == "CXR1"
    assert cxr1["images"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert cxr1["mesh"] == ["normal"]
    assert cxr1["indication"] == "Positive TB test" and cxr1["comparison"] == "None."
    assert _iu_report(cxr1) == (
        "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. "
        "There is no focal consolidation. There are no of a pleural effusion. There is no evidence of "
        "pneumothorax.\nNormal chest x-."
    )
    cxr2 = iu_reports["ecgen-radiology/2.xml"]
    assert cxr2["mesh"] == ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"]
    assert _iu_report(cxr2) == (
        "Borderline cardiomegaly. Midline sternotomy. Enlarged pulmonary arteries. Clear lungs. Inferior.\n"
        "No acute pulmonary findings."
    )
    # impression only (empty FINDINGS), three images
    cxr3955 = iu_reports["ecgen-radiology/3955.xml"]
    assert cxr3955["findings"] == "" and len(cxr3955["images"]) == 3
    assert _iu_report(cxr3955) == (
        "1. Chest. No visible active cardiopulmonary disease. 2. Left hip. Advanced posttraumatic osteoarthritis."
    )
    # placeholder glued to a number, and the ". ." it leaves behind
    assert _iu_report(iu_reports["ecgen-radiology/488.xml"]).startswith("Broken of the 4, similar to the prior study.")
    assert _iu_report(iu_reports["ecgen-radiology/488.xml"]).endswith("\nNo acute pulmonary findings.")


def test_parse_iu_xml_errors_name_the_source():
    with pytest.raises(ReportParseError, match=r"ecgen-radiology/7\.xml: malformed report XML"):
        parse_iu_xml(b"<eCitation><uId id='CXR7'/>", "ecgen-radiology/7.xml")
    with pytest.raises(ReportParseError, match=r"7\.xml: root element <html>, expected <eCitation>"):
        parse_iu_xml("<html/>", "7.xml")
    bomb = b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaa">]><eCitation>&a;</eCitation>'
    with pytest.raises(ReportParseError, match=r"bomb\.xml: DOCTYPE/ENTITY declarations are not accepted"):
        parse_iu_xml(bomb, "bomb.xml")
    # no uId: the report id is the file name
    parsed = parse_iu_xml('<eCitation><AbstractText Label="IMPRESSION"> Clear. </AbstractText></eCitation>', "a/9.xml")
    assert parsed["report_id"] == "9" and parsed["impression"] == "Clear." and parsed["images"] == []


# ---------------------------------------------------------------------------------------------
# MIMIC-style free text
# ---------------------------------------------------------------------------------------------

MIMIC_FULL = """\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough and fever  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The lungs are clear without focal consolidation.  No pleural effusion or
 pneumothorax is seen.  The cardiac and mediastinal silhouettes are
 unremarkable.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

MIMIC_INLINE = """\
 WET READ: ___ ___ 10:52 AM
  No pneumonia.
 ______________________________________________________________________________
                                 FINAL REPORT
 HISTORY:  Shortness of breath.
 FINDINGS:  Portable AP view of the chest.  Moderate cardiomegaly is
   unchanged since ___.  Mild pulmonary vascular congestion.
 IMPRESSION:  1. Mild pulmonary vascular congestion.
   2. Stable cardiomegaly.
 RECOMMENDATION(S):  Follow-up radiograph after diuresis.
"""

MIMIC_BOTH = """\
                                 FINAL REPORT
 INDICATION:  Intubated patient, assess tube position.
 FINDINGS AND IMPRESSION:  Endotracheal tube terminates 4 cm above the carina.
 Nasogastric tube courses below the diaphragm.  No pneumothorax.
 NOTIFICATION:  Dr. ___ was paged at 9:15.
"""

MIMIC_NONE = """\
                                 FINAL REPORT
 INDICATION:  ___-year-old man with chest pain.
 COMPARISON:  None.
 PA and lateral views of the chest were obtained.  The lungs are clear.
"""


def test_report_sections_mimic_layout():
    sections = report_sections(MIMIC_FULL)
    assert list(sections) == ["final report", "examination", "indication", "technique", "comparison", "findings",
                              "impression"]
    assert sections["examination"] == "CHEST (PA AND LAT)"
    assert sections["findings"] == ("The lungs are clear without focal consolidation.  No pleural effusion or "
                                    "pneumothorax is seen.  The cardiac and mediastinal silhouettes are unremarkable.")
    assert sections["impression"] == "No acute cardiopulmonary process."
    inline = report_sections(MIMIC_INLINE)
    assert inline["wet read"] == "___ ___ 10:52 AM No pneumonia. " + "_" * 78
    assert inline["findings"] == ("Portable AP view of the chest.  Moderate cardiomegaly is unchanged since ___.  "
                                  "Mild pulmonary vascular congestion.")
    # numbered items stay on their own lines
    assert inline["impression"] == "1. Mild pulmonary vascular congestion.\n2. Stable cardiomegaly."
    assert inline["recommendation(s)"] == "Follow-up radiograph after diuresis."
    assert report_sections("no headings at all\n  here") == {"preamble": "no headings at all here"}
    assert report_sections("") == {} and report_sections(None) == {}
    # a heading used twice (an addendum) keeps both texts
    assert report_sections("IMPRESSION: First.\nADDENDUM\nIMPRESSION: Second.")["impression"] == "First.\nSecond."


def test_findings_impression():
    assert findings_impression(MIMIC_FULL) == (
        "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax is seen. "
        "The cardiac and mediastinal silhouettes are unremarkable.\nNo acute cardiopulmonary process."
    )
    # placeholders removed, numbered impression after the findings
    assert findings_impression(MIMIC_INLINE) == (
        "Portable AP view of the chest. Moderate cardiomegaly is unchanged since. Mild pulmonary vascular "
        "congestion.\n1. Mild pulmonary vascular congestion.\n2. Stable cardiomegaly."
    )
    assert findings_impression(MIMIC_BOTH) == ("Endotracheal tube terminates 4 cm above the carina. Nasogastric "
                                               "tube courses below the diaphragm. No pneumothorax.")
    assert findings_impression(MIMIC_NONE) == ""
    assert findings_impression("IMPRESSION: ___") == ""  # only a placeholder
    assert findings_impression("CONCLUSION: No change.\nFINDINGS: Stable.") == "Stable.\nNo change."


# ---------------------------------------------------------------------------------------------
# prepare iu_xray
# ---------------------------------------------------------------------------------------------


def _real_pngs(n: int) -> list[str]:
    names = sorted(f for f in os.listdir(NOTES_IMAGES) if f.endswith(".png"))[:n]
    return [os.path.join(NOTES_IMAGES, f) for f in names]


@needs_iu
def test_prepare_iu_xray_from_archive(tmp_path, iu_reports):
    root = tmp_path / "iu"
    (root / "NLMCXR_png").mkdir(parents=True)
    os.symlink(IU_TGZ, root / "NLMCXR_reports.tgz")
    chosen = [f"ecgen-radiology/{n}.xml" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3955)]
    wanted = [i for name in chosen for i in iu_reports[name]["images"]]
    wanted.append(iu_reports["ecgen-radiology/1137.xml"]["images"][0])  # its report is empty: dropped
    for image_id, png in zip(wanted, _real_pngs(len(wanted))):
        os.symlink(png, root / "NLMCXR_png" / f"{image_id}.png")
    data = prepare_iu_xray(str(root), str(tmp_path / "iu.json"), seed=3, on_error="skip", quiet=True)
    items = [it for s in ("training", "validation", "test") for it in data[s]]
    assert len(items) == len(wanted) - 1 == 23
    assert {it["patient_id"] for it in items} == {iu_reports[n]["report_id"] for n in chosen}
    by_image = {it["image"]: it for it in items}
    first = by_image["NLMCXR_png/CXR1_1_IM-0001-3001.png"]
    assert first["report"] == _iu_report(iu_reports["ecgen-radiology/1.xml"])
    assert first["view"] == "" and first["mesh"] == ["normal"]
    patients = {s: {it["patient_id"] for it in data[s]} for s in ("training", "validation", "test")}
    assert not (patients["training"] & patients["validation"] or patients["training"] & patients["test"]
                or patients["validation"] & patients["test"])
    assert data["test"] and data["validation"]
    summary = data["prepare"]["summary"]
    assert summary["dropped"] == {
        "report lists no image (<parentImage>)": 104,
        "report has no FINDINGS/IMPRESSION text once XXXX placeholders are removed": 25,
    }
    # every other image of a report with text is listed but not on disk
    assert summary["skipped_bad_input"] == {"image listed in the report not found": 7430 - 23}


@needs_iu
def test_prepare_iu_xray_extracted_folder_and_missing_image(tmp_path, iu_reports):
    root = tmp_path / "iu"
    (root / "ecgen-radiology").mkdir(parents=True)
    (root / "images" / "sub").mkdir(parents=True)
    with tarfile.open(IU_TGZ) as tar:
        for n in (1, 2, 1068):  # CXR1068 lists no image
            name = f"ecgen-radiology/{n}.xml"
            (root / name).write_bytes(tar.extractfile(name).read())
    wanted = iu_reports["ecgen-radiology/1.xml"]["images"] + iu_reports["ecgen-radiology/2.xml"]["images"]
    for image_id, png in zip(wanted, _real_pngs(len(wanted))):
        os.symlink(png, root / "images" / "sub" / f"{image_id}.png")  # found recursively
    data = prepare_iu_xray(str(root), str(tmp_path / "iu.json"), val_frac=0.0, test_frac=0.4, quiet=True)
    assert sorted(it["image"] for s in ("training", "test") for it in data[s]) == sorted(
        f"images/sub/{i}.png" for i in wanted)
    assert data["prepare"]["summary"]["dropped"] == {"report lists no image (<parentImage>)": 1}
    os.remove(root / "images" / "sub" / "CXR2_IM-0652-2001.png")
    with pytest.raises(PrepareError, match=r"ecgen-radiology/2\.xml#CXR2_IM-0652-2001: image listed in the report "
                                           r"not found \(no CXR2_IM-0652-2001\.png under images/\)"):
        prepare_iu_xray(str(root), str(tmp_path / "iu2.json"), quiet=True)


# ---------------------------------------------------------------------------------------------
# prepare mimic_cxr
# ---------------------------------------------------------------------------------------------

METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]

# (dicom_id, subject, study, ViewPosition, official split)
MIMIC_IMAGES = [
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267", "PA", "train"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267", "LATERAL", "train"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527", "AP", "train"),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "10000764", "57375967", "AP", "validate"),
    ("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "10000764", "57375967", "LL", "validate"),
    ("fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818", "10000898", "50771383", "PA", "test"),
    ("ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c", "10001122", "51234567", "PA", "test"),
    ("e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c", "10001122", "51234567", "", "test"),
]
MIMIC_REPORTS = {("10000032", "50414267"): MIMIC_FULL, ("10000032", "53189527"): MIMIC_INLINE,
                 ("10000764", "57375967"): MIMIC_BOTH, ("10000898", "50771383"): MIMIC_NONE,
                 ("10001122", "51234567"): "FINAL REPORT\n IMPRESSION:  No acute process.  Dr. ___ informed.\n"}
# (subject, study) → 14 label cells in CHEXPERT_CLASSES order; study 51234567 is not labelled
MIMIC_LABELS = {
    ("10000032", "50414267"): ["", "", "", "", "", "", "", "", "1.0", "", "", "", "", ""],
    ("10000032", "53189527"): ["", "1.0", "", "-1.0", "", "", "", "", "", "0.0", "", "", "", ""],
    ("10000764", "57375967"): ["", "", "", "", "", "", "", "", "", "", "", "", "0.0", "1.0"],
    ("10000898", "50771383"): ["-1.0", "", "", "", "", "", "", "", "", "", "", "", "", ""],
}


def _write_csv_gz(path, header, rows) -> None:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _mimic_tree(root, reports_under: str = "files", drop_from_split: str | None = None):
    """A native MIMIC-CXR-JPG tree: csv.gz tables, JPEGs made from real PNGs, report txts."""
    root.mkdir(parents=True, exist_ok=True)
    for (dicom, subject, study, _, _), png in zip(MIMIC_IMAGES, _real_pngs(len(MIMIC_IMAGES))):
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(png) as image:
            image.convert("L").resize((64, 64)).save(folder / f"{dicom}.jpg", quality=90)
    for (subject, study), text in MIMIC_REPORTS.items():
        folder = root / reports_under / f"p{subject[:2]}" / f"p{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(text, encoding="utf-8")
    _write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
                  [[d, st_, su, sp] for d, su, st_, _, sp in MIMIC_IMAGES if d != drop_from_split])
    view_names = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
    _write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, [
        [d, su, st_, "CHEST (PA AND LAT)", v, "3056", "2544", "21800506", "213014.531", "CHEST (PA AND LAT)",
         view_names.get(v, ""), "Erect"] for d, su, st_, v, _ in MIMIC_IMAGES])
    _write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_CLASSES],
                  [[su, st_, *cells] for (su, st_), cells in MIMIC_LABELS.items()])
    return root


def test_prepare_mimic_cxr_official_split_views_labels(tmp_path):
    root = _mimic_tree(tmp_path / "mimic")
    data = prepare_mimic_cxr(str(root), str(tmp_path / "m.json"), quiet=True)
    dicoms = {s: sorted(it["image"].rsplit("/", 1)[1][:-4] for it in data[s]) for s in ("training", "validation", "test")}
    assert dicoms == {
        "training": sorted(["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]),
        "validation": ["68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"],
        "test": ["ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c"],  # the other test study has no findings/impression
    }
    assert data["label_names"] == list(CHEXPERT_CLASSES)
    first = data["training"][0]
    assert first["image"] == "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    assert first["patient_id"] == "10000032" and first["study_id"] == "50414267" and first["view"] == "PA"
    assert first["report"] == findings_impression(MIMIC_FULL)
    assert first["labels"] == {c: int(c == "No Finding") for c in CHEXPERT_CLASSES}
    second = data["training"][1]
    assert {k: v for k, v in second["labels"].items() if v} == {"Cardiomegaly": 1, "Edema": -1}
    assert data["validation"][0]["labels"]["Support Devices"] == 1
    assert data["test"][0]["report"] == "No acute process. Dr. informed."
    assert "labels" not in data["test"][0]
    summary = data["prepare"]["summary"]
    assert summary["dropped"] == {
        "ViewPosition LATERAL not selected (views=frontal)": 1,
        "ViewPosition LL not selected (views=frontal)": 1,
        "ViewPosition not recorded (views=frontal keeps recorded views only)": 1,
        "no FINDINGS/IMPRESSION section": 1,
    }
    assert summary["kept_incomplete"] == {"study not in mimic-cxr-2.0.0-chexpert.csv.gz: no labels": 1}

    ones = prepare_mimic_cxr(str(root), str(tmp_path / "m1.json"), uncertain="ones", quiet=True)
    assert ones["training"][1]["labels"]["Edema"] == 1
    zeros = prepare_mimic_cxr(str(root), str(tmp_path / "m0.json"), uncertain="zeros", labels="false", quiet=True)
    assert "label_names" not in zeros and all("labels" not in it for it in zeros["training"])
    everything = prepare_mimic_cxr(str(root), str(tmp_path / "ma.json"), views="all", quiet=True)
    assert sum(len(everything[s]) for s in ("training", "validation", "test")) == 7
    assert {it["view"] for it in everything["test"]} == {"PA", ""}


def test_prepare_mimic_cxr_reports_root_and_bad_rows(tmp_path):
    # reports in ROOT/mimic-cxr-reports/files, a dicom_id missing from the split csv
    root = _mimic_tree(tmp_path / "mimic", reports_under="mimic-cxr-reports/files",
                       drop_from_split="2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab")
    with pytest.raises(PrepareError, match=r"mimic-cxr-2\.0\.0-metadata\.csv\.gz:4: dicom_id "
                                           r"2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab not in "
                                           r"mimic-cxr-2\.0\.0-split\.csv\.gz"):
        prepare_mimic_cxr(str(root), str(tmp_path / "m.json"), quiet=True)
    data = prepare_mimic_cxr(str(root), str(tmp_path / "m.json"), on_error="skip", quiet=True)
    assert len(data["training"]) == 1 and data["training"][0]["report"] == findings_impression(MIMIC_FULL)
    assert data["prepare"]["summary"]["skipped_bad_input"] == {
        "dicom_id 2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab not in mimic-cxr-2.0.0-split.csv.gz": 1}
    # an explicit reports_root (split row restored); a study without its report file is bad input
    _write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
                  [[d, st_, su, sp] for d, su, st_, _, sp in MIMIC_IMAGES])
    reports = tmp_path / "reports"
    os.rename(root / "mimic-cxr-reports", reports)
    data = prepare_mimic_cxr(str(root), str(tmp_path / "m.json"), reports_root=str(reports), quiet=True)
    assert len(data["training"]) == 2
    os.remove(reports / "files" / "p10" / "p10000764" / "s57375967.txt")
    with pytest.raises(PrepareError, match=r"metadata\.csv\.gz:5: report file not found \(.*s57375967\.txt\)"):
        prepare_mimic_cxr(str(root), str(tmp_path / "m.json"), reports_root=str(reports), quiet=True)


# ---------------------------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
_REPORTISH = st.lists(st.sampled_from(["FINDINGS:", "IMPRESSION:", "FINDINGS AND IMPRESSION:", "FINAL REPORT", "\n",
                                       " ", "___", "XXXX", ".", ",", "lungs clear", "\x00", "\u2028", "\x85", "1. "]),
                      max_size=40).map("".join)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.one_of(_TEXT, _REPORTISH))
def test_fuzz_text_functions_never_raise(text):
    cleaned = clean_report(text)
    assert isinstance(cleaned, str) and "XXXX" not in cleaned and "___" not in cleaned
    assert clean_report(cleaned) == cleaned or cleaned == ""  # idempotent on its own output
    sections = report_sections(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in sections.items())
    assert isinstance(findings_impression(text), str)


@functools.lru_cache(maxsize=1)
def _real_xml() -> bytes:
    with tarfile.open(IU_TGZ) as tar:
        return tar.extractfile("ecgen-radiology/1.xml").read()


@needs_iu
@FUZZ
@given(st.data())
def test_fuzz_iu_xml_raises_only_report_parse_error(data):
    real = _real_xml()
    choice = data.draw(st.sampled_from(["random", "truncated", "mutated"]))
    if choice == "random":
        blob = data.draw(st.binary(max_size=300))
    elif choice == "truncated":
        blob = real[: data.draw(st.integers(0, len(real) - 1))]
    else:
        position = data.draw(st.integers(0, len(real) - 1))
        blob = real[:position] + data.draw(st.binary(min_size=1, max_size=8)) + real[position + 1:]
    try:
        parsed = parse_iu_xml(blob, "fuzz.xml")
    except ReportParseError as err:
        assert "fuzz.xml" in str(err)
    else:
        assert isinstance(parsed["images"], list) and isinstance(parsed["report_id"], str)

