"""Property-based fuzzing of the three readers every run goes through: the datalist loader, the
report parser and the image reader. Whatever the input, each either returns a value of the
documented kind or raises the project's own error type with a message; nothing else escapes
(no KeyError/TypeError tracebacks, no NaN images).

CI runs ``RECLF_FUZZ_EXAMPLES`` (default 200) examples per property; the nightly-style opt-in
runs more: ``RECLF_FUZZ_EXAMPLES=2000 python -m pytest tests/test_reliability_fuzz.py``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custom.data import DatalistError, load_datalist
from custom.io import RadiographReadError, read_radiograph
from custom.reports import ReportParseError, clean_report, findings_impression, parse_iu_xml, report_sections

EXAMPLES = int(os.environ.get("RECLF_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)

_WORK = tempfile.mkdtemp(prefix="reclf_fuzz_")
_IMAGE = os.path.join(_WORK, "a.png")


def _write_png() -> None:
    from PIL import Image

    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(_IMAGE)


_write_png()

# ---- datalist loader ---------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["a.png", _IMAGE, "missing.png", "", "  ", "../a.png"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
items = st.one_of(
    st.fixed_dictionaries({"image": scalars}, optional={"report": values, "mask": scalars, "labels": values}),
    values,
)
datalists = st.one_of(
    st.dictionaries(st.sampled_from(["training", "validation", "test", "label_names", "x"]),
                    st.one_of(st.lists(items, max_size=4), values), max_size=4),
    values,
)


@FUZZ
@given(content=datalists, split=st.sampled_from(["training", "validation", "test", "all"]),
       missing=st.sampled_from(["error", "skip"]), allow_empty=st.booleans())
def test_datalist_loader_returns_checked_items_or_a_datalist_error(content, split, missing, allow_empty):
    path = os.path.join(_WORK, "datalist.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f)
    try:
        loaded = load_datalist(path, _WORK, split, require=("image", "report"), missing=missing,
                               allow_empty=allow_empty)
    except DatalistError as err:
        assert str(err).startswith(f"datalist {path!r}") or path in str(err), str(err)
        return
    assert allow_empty or loaded
    for item in loaded:
        assert isinstance(item["image"], str) and os.path.isfile(item["image"])
        assert isinstance(item["report"], str) and item["report"].strip()
        assert item["split"] in ("training", "validation", "test") and isinstance(item["row"], int)


@FUZZ
@given(data=st.binary(max_size=200))
def test_datalist_loader_on_arbitrary_bytes(data):
    path = os.path.join(_WORK, "bytes.json")
    with open(path, "wb") as f:
        f.write(data)
    try:
        load_datalist(path, _WORK, "all")
    except DatalistError as err:
        assert path in str(err)


# ---- report parser -----------------------------------------------------------------------------

headings = st.sampled_from(["FINDINGS:", "IMPRESSION:", "FINDINGS AND IMPRESSION:", "FINAL REPORT", "ADDENDUM",
                            "CONCLUSION:", "INDICATION:", "___", "XXXX", "\n", " ", ".", ". .", "\x00", "\t"])
reports = st.lists(st.one_of(headings, st.text(max_size=20)), max_size=12).map(" ".join)


@FUZZ
@given(text=st.one_of(reports, st.text(max_size=200), st.none()))
def test_report_parser_never_raises_on_text_and_returns_clean_words(text):
    sections = report_sections(text)
    assert isinstance(sections, dict) and all(isinstance(v, str) for v in sections.values())
    for out in (clean_report(text), findings_impression(text)):
        assert isinstance(out, str) and "\x00" not in out
        assert out == "" or any(ch.isalnum() for ch in out)
        assert out == out.strip() and "\n\n" not in out
        assert clean_report(out) == out  # cleaning is idempotent


xml_pieces = st.sampled_from(["<eCitation>", "</eCitation>", "<AbstractText Label=\"FINDINGS\">", "</AbstractText>",
                              "<uId id=\"CXR1\"/>", "<parentImage id=\"x\"/>", "<!DOCTYPE a>", "<!ENTITY e \"x\">",
                              "&e;", "<?xml version=\"1.0\"?>", "<MeSH><major>normal</major></MeSH>", "<a>", "</a>"])


@FUZZ
@given(pieces=st.lists(st.one_of(xml_pieces, st.text(max_size=10)), max_size=10), as_bytes=st.booleans())
def test_iu_xml_parser_returns_a_report_or_a_parse_error(pieces, as_bytes):
    data = "".join(pieces)
    try:
        parsed = parse_iu_xml(data.encode("utf-8", "surrogatepass") if as_bytes else data, "r.xml")
    except ReportParseError as err:
        assert str(err).startswith("r.xml:")
        return
    assert set(parsed) >= {"report_id", "findings", "impression", "images", "mesh"}
    assert all(isinstance(parsed[k], str) for k in ("report_id", "findings", "impression"))


# ---- image reader ------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> None:
    assert image.dtype == np.float32 and image.ndim == 2 and min(image.shape) >= 1
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


@FUZZ
@given(data=st.binary(max_size=400), ext=st.sampled_from([".png", ".jpg", ".dcm", ".nii", ".nii.gz"]))
def test_image_reader_on_arbitrary_bytes(data, ext):
    path = os.path.join(_WORK, "junk" + ext)
    with open(path, "wb") as f:
        f.write(data)
    try:
        _check_image(read_radiograph(path))
    except RadiographReadError as err:
        assert path in str(err)


arrays = st.tuples(
    st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]),
    st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**31 - 1),
    st.sampled_from([1.0, 1e3, 1e30, 1e300]),
)


@FUZZ
@given(spec=arrays, ext=st.sampled_from([".png", ".nii.gz", ".dcm"]))
def test_image_reader_on_valid_files_of_any_depth_and_range(spec, ext):
    """Real files in every container, any bit depth, size and value range: finite [0, 1] out."""
    dtype, h, w, seed, magnitude = spec
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(h, w), dtype=dtype, endpoint=True)
    else:
        # values up to a tenth of the type's largest (beyond it the file itself holds inf)
        array = (rng.standard_normal((h, w)).clip(-5, 5) * min(magnitude, float(np.finfo(dtype).max) / 50)).astype(dtype)
    path = os.path.join(_WORK, "valid" + ext)
    if ext == ".png":
        from PIL import Image

        if dtype not in (np.uint8, np.uint16):
            array = array.astype(np.float64)
            array = ((array - array.min()) / max(float(array.max() - array.min()), 1e-300) * 255).astype(np.uint8)
        Image.fromarray(array).save(path)
    elif ext == ".nii.gz":
        import nibabel as nib

        nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    else:
        if dtype not in (np.uint8, np.uint16, np.int16):
            array = array.astype(np.float64)
            array = ((array - array.min()) / max(float(array.max() - array.min()), 1e-300) * 4095).astype(np.uint16)
        _write_dicom(path, array)
    _check_image(read_radiograph(path))


def _write_dicom(path: str, array: np.ndarray) -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = array.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(array.dtype, np.signedinteger) else 0
    ds.PixelData = np.ascontiguousarray(array).tobytes()
    ds.save_as(path, enforce_file_format=True)
