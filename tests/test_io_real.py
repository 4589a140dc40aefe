"""The radiograph reader on the real DICOM files in ../shared/data/dicom, orientation against
MONAI's readers, the bad-image policy of the pretraining dataset, and fuzzing (hypothesis)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from custom.io import RadiographReadError, read_radiograph

DICOM_DIR = os.path.join(SHARED_DATA, "dicom")
DICOMS = sorted(os.listdir(DICOM_DIR)) if os.path.isdir(DICOM_DIR) else []
SIIM = os.path.join(DICOM_DIR, "siim_cr_chest_monochrome2_jpeg_baseline.dcm")
SIIM_FLAGGED = os.path.join(DICOM_DIR, "siim_cr_chest_flagged_monochrome1.dcm")
needs_shared = pytest.mark.skipif(not DICOMS, reason="../shared/data/dicom not present")


@needs_shared
def test_every_shared_dicom_loads_in_unit_range_with_header_shape():
    assert len(DICOMS) == 5
    for name in DICOMS:
        path = os.path.join(DICOM_DIR, name)
        array = read_radiograph(path)
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        assert array.shape == (header.Rows, header.Columns), name  # rows x columns, not transposed
        assert array.dtype == np.float32 and array.min() == 0.0 and array.max() == 1.0, name
        assert 0.05 < array.mean() < 0.95, name


@needs_shared
def test_monochrome1_twin_is_the_inverse_of_its_monochrome2_original():
    original, flagged = read_radiograph(SIIM), read_radiograph(SIIM_FLAGGED)
    assert np.abs(original + flagged - 1.0).max() < 1e-6
    assert abs(original.mean() - flagged.mean()) > 0.1  # not a constant image


@needs_shared
def test_no_file_meta_cr_loads_as_implicit_little_endian_and_inverted():
    path = os.path.join(DICOM_DIR, "cr_chest_monochrome1_10bit_no_file_meta.dcm")
    ds = pydicom.dcmread(path, force=True)
    assert "TransferSyntaxUID" not in getattr(ds, "file_meta", {})
    array = read_radiograph(path)
    assert array.shape == (440, 440)
    # MONOCHROME1: the brightest stored value must come out darkest
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    stored = ds.pixel_array.astype(np.float64)
    assert np.corrcoef(stored.ravel(), array.ravel())[0, 1] < -0.9


@needs_shared
def test_dicom_without_extension_is_recognised(tmp_path):
    target = tmp_path / "IM0001"
    shutil.copyfile(SIIM, target)
    np.testing.assert_array_equal(read_radiograph(str(target)), read_radiograph(SIIM))


@needs_shared
def test_missing_decoder_plugin_is_named(tmp_path):
    """A compressed syntax without an installed decoder names the plugin to install."""
    ds = pydicom.dcmread(SIIM)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless  # no HTJ2K decoder installed here
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(RadiographReadError, match=r"htj2k\.dcm.*no installed plugin.*pylibjpeg-openjpeg"):
        read_radiograph(str(path))


@needs_shared
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.97])
def test_truncated_dicom_gives_the_documented_error(tmp_path, keep):
    data = open(SIIM, "rb").read()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(RadiographReadError, match="truncated.dcm"):
        read_radiograph(str(path))


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "scan.bmp").write_bytes(b"BM")
    with pytest.raises(RadiographReadError, match=r"scan\.bmp: unknown extension '\.bmp'"):
        read_radiograph(str(tmp_path / "scan.bmp"))
    with pytest.raises(RadiographReadError, match="nothere.png: file not found"):
        read_radiograph(str(tmp_path / "nothere.png"))


def _marked_image(h: int = 40, w: int = 60) -> np.ndarray:
    """Dark image with a bright block in the top-left corner (row 0..9, col 0..4): orientation marker."""
    image = np.zeros((h, w), np.uint8)
    image[:10, :5] = 255
    return image


def test_png_dicom_and_nifti_keep_rows_and_columns_as_displayed(tmp_path):
    import nibabel as nib
    from monai.transforms import LoadImage

    marked = _marked_image()
    png = tmp_path / "marked.png"
    Image.fromarray(marked).save(png)
    np.testing.assert_array_equal(read_radiograph(str(png)) > 0.5, marked > 0)
    # MONAI's 2-D reader returns the transpose: the reason io.py exists
    monai_array = np.asarray(LoadImage(image_only=True, reader="PILReader")(str(png)))
    assert monai_array.shape == marked.T.shape
    # DICOM built from the same array
    ds = pydicom.dcmread(SIIM) if DICOMS else None
    if ds is not None:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = *marked.shape, 8, 8, 7
        ds.PixelData = marked.tobytes()
        for tag in ("WindowCenter", "WindowWidth"):
            if tag in ds:
                delattr(ds, tag)
        ds.save_as(tmp_path / "marked.dcm", enforce_file_format=True)
        np.testing.assert_array_equal(read_radiograph(str(tmp_path / "marked.dcm")) > 0.5, marked > 0)
    # NIfTI stores x (columns) first, y pointing up
    nib.save(nib.Nifti1Image(np.flipud(marked).T.astype(np.float32), np.eye(4)), tmp_path / "marked.nii.gz")
    np.testing.assert_array_equal(read_radiograph(str(tmp_path / "marked.nii.gz")) > 0.5, marked > 0)


def test_resize_and_pad_keep_the_marker_top_left(tmp_path):
    from custom.data import image_transform

    png = tmp_path / "marked.png"
    Image.fromarray(_marked_image(40, 60)).save(png)
    out = np.asarray(image_transform(30)({"image": str(png)})["image"])[0]
    assert out.shape == (30, 30)
    # 60 wide → 30: the 40-row image becomes 20 rows, padded by 5 above and below
    assert out[5:10, :2].mean() > 0.9 and out[:5].max() == 0.0 and out[5:, 10:].max() < 0.1


def test_pretrain_dataset_names_the_row_of_an_unreadable_image_or_skips_it(tmp_path):
    from custom.data import DatalistError, decode_images, image_transform

    for n in range(3):
        Image.fromarray(_marked_image()).save(tmp_path / f"good{n}.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    items = [{"image": str(tmp_path / f"good{n}.png"), "split": "training", "row": n} for n in range(3)]
    items.insert(2, {"image": str(broken), "split": "training", "row": 7})
    with pytest.raises(DatalistError, match=r"1 image\(s\) cannot be read, first at training\[7\]: .*broken\.png"):
        decode_images(items, image_transform(16))
    images, kept = decode_images(items, image_transform(16), bad_images="skip")
    assert [it["row"] for it in kept] == [0, 1, 2] and len(images) == 3
    cache = tmp_path / "cache"
    images, kept = decode_images(items, image_transform(16), cache_dir=str(cache), bad_images="skip")
    from custom.image_cache import cache_size

    assert len(kept) == 3 and len(images) == 3 and cache_size(str(cache))["files"] == 3  # decoded once, on disk


# ---- fuzzing ----------------------------------------------------------------------------------

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(data=st.binary(max_size=2048), ext=st.sampled_from([".png", ".jpg", ".dcm", ".nii", ".nii.gz", ""]))
def test_fuzz_random_bytes_raise_only_the_documented_error(tmp_path, data, ext):
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(data)
    try:
        array = read_radiograph(str(path))
    except RadiographReadError as err:
        assert str(path) in str(err)
    else:
        assert array.ndim == 2 and np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


@needs_shared
@_FUZZ
@given(name=st.sampled_from([n for n in DICOMS if "dental" not in n] or ["none"]), cut=st.floats(0.0, 1.0), flip=st.integers(0, 10**9))
def test_fuzz_truncated_or_corrupted_real_dicoms(tmp_path, name, cut, flip):
    data = bytearray(open(os.path.join(DICOM_DIR, name), "rb").read())
    data = data[: max(1, int(len(data) * cut))]
    data[flip % len(data)] ^= 0xFF  # one corrupted byte somewhere
    path = tmp_path / "case.dcm"
    path.write_bytes(bytes(data))
    try:
        array = read_radiograph(str(path))
    except RadiographReadError as err:
        assert "case.dcm" in str(err)
    else:
        assert array.ndim == 2 and np.isfinite(array).all()
