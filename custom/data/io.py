"""Reading radiographs into (H, W) float32 arrays in [0, 1], rows top→bottom, columns left→right
as the image is displayed (no transposition, unlike MONAI's 2-D readers)."""

from __future__ import annotations

import os

import numpy as np


class RadiographReadError(ValueError):
    """A radiograph could not be read; the message names the file and the fix."""


def _to_unit(array: np.ndarray) -> np.ndarray:
    """Min–max to [0, 1] (the full stored range displayed, as a viewer does without a window).

    Computed in float64: values near float32's limits (a modality LUT can produce them) would
    overflow ``hi - lo`` in float32 and come out NaN.
    """
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 3:  # RGB(A) → gray
        array = array[..., :3].mean(-1)
    if array.ndim != 2 or min(array.shape) < 1:
        raise RadiographReadError(f"expected a 2-D image, got an array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise RadiographReadError("the image holds non-finite values (NaN/inf)")
    lo, hi = float(array.min()), float(array.max())
    if not hi > lo:
        return np.zeros(array.shape, dtype=np.float32)
    return ((array - lo) / (hi - lo)).astype(np.float32)


def _square_pixels(array: np.ndarray, row_spacing: float, column_spacing: float) -> np.ndarray:
    """Resample so that a pixel is as tall as it is wide (as a viewer displays non-square pixels):
    the axis with the larger spacing is stretched by the ratio."""
    ratio = float(row_spacing) / float(column_spacing)
    if not np.isfinite(ratio) or ratio <= 0 or abs(ratio - 1.0) < 0.01:
        return array
    import torch

    h, w = array.shape
    size = (max(1, round(h * ratio)), w) if ratio > 1 else (h, max(1, round(w / ratio)))
    resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(array))[None, None], size=size,
                                              mode="bilinear", align_corners=False)
    # bilinear weights sum to 1 only up to rounding: keep the documented [0, 1] range exact
    return resized[0, 0].clamp_(0.0, 1.0).numpy().astype(np.float32)


def _dicom_spacing(ds) -> tuple[float, float] | None:
    """(row spacing, column spacing) from PixelSpacing / ImagerPixelSpacing, or PixelAspectRatio;
    None when absent or malformed (one value, not numbers): then pixels are taken as square."""
    for key in ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio"):
        pair = _number_pair(ds.get(key))
        if pair is not None:
            return pair
    return None


def _number_pair(value) -> tuple[float, float] | None:
    if value is None or isinstance(value, (str, bytes, int, float)):
        return None
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return (values[0], values[1]) if len(values) == 2 and min(values) > 0 else None


def _read_pil(path: str, reduce_to: int | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if reduce_to and img.format == "JPEG":
            # JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT (libjpeg), never below the size the
            # caller resizes to: a 2,500 x 3,000 radiograph for a 224 px run decodes ~5x faster
            w, h = img.size
            scale = float(reduce_to) / max(w, h)
            if scale < 0.5:
                img.draft("L", (max(1, int(np.ceil(w * scale))), max(1, int(np.ceil(h * scale)))))
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit / 32-bit / float grayscale: often 10-12 significant bits in a 16-bit container;
            # dividing by 65535 would show a 12-bit radiograph nearly black: its stored range is shown
            return _to_unit(np.asarray(img))
        # 1-bit, palette, gray+alpha, RGB(A), CMYK ...: the 8-bit gray a viewer shows
        array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return array


def _read_dicom(path: str) -> np.ndarray:
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2: MONAI Label's environment pins pydicom<3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise RadiographReadError(f"{path}: DICOM file has no pixel data")
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # files without a meta header are implicit VR little endian by the standard's default
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2 has no decoder registry: decoding errors are reported below
        get_decoder = None
    if syntax.is_compressed and get_decoder is not None:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise RadiographReadError(f"{path}: pydicom has no decoder for transfer syntax {syntax.name} ({syntax})") from None
        if not decoder.is_available:
            raise RadiographReadError(
                f"{path}: pixel data is compressed as {syntax.name} and no installed plugin decodes it; install "
                f"one of: {'; '.join(decoder.missing_dependencies)}"
            )
    try:
        pixels = ds.pixel_array
    except Exception as err:  # decoder plugins raise assorted types
        raise RadiographReadError(f"{path}: cannot decode pixel data ({syntax.name}): {err} (truncated or corrupt file?)") from err
    if int(ds.get("SamplesPerPixel", 1)) > 1 and pixels.ndim == 3:
        return _to_unit(pixels)  # colour (secondary capture): gray, no LUTs apply
    if pixels.ndim != 2:
        raise RadiographReadError(f"{path}: expected one 2-D grayscale frame, got pixel array of shape {pixels.shape}")
    array = apply_modality_lut(pixels, ds)
    array = apply_voi_lut(array, ds, index=0) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else array
    array = _to_unit(array)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        array = 1.0 - array  # MONOCHROME1: high values are dark
    spacing = _dicom_spacing(ds)
    return _square_pixels(array, *spacing) if spacing else array


def _read_nifti(path: str) -> np.ndarray:
    import nibabel as nib

    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float64)
    zooms = [float(z) for z in image.header.get_zooms()]
    if data.ndim == 1:
        data, zooms = data[:, None], zooms[:1] + [1.0]
    # singleton axes beyond (x, y) are dropped; a 1-pixel-high image stays 2-D, and a plane
    # stored as (x, 1, y) keeps its two real axes
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 2 and sum(n > 1 for n in data.shape) <= 2:
        axes = [a for a, n in enumerate(data.shape) if n > 1]
        axes = axes + [a for a in range(data.ndim) if a not in axes][: 2 - len(axes)]
        axes.sort()
        zooms = [zooms[a] if a < len(zooms) else 1.0 for a in axes]
        data = data.reshape([data.shape[a] for a in axes])
    zooms = zooms[:2]
    if data.ndim != 2:
        raise RadiographReadError(f"{path}: expected a 2-D NIfTI image (x, y[, 1, ...]), got shape {data.shape}")
    # NIfTI stores (x=columns, y=rows); rows are flipped so that the first row is the top
    array = _to_unit(np.flipud(data.T))
    return _square_pixels(array, zooms[1], zooms[0]) if len(zooms) == 2 else array


_READERS = {".png": _read_pil, ".jpg": _read_pil, ".jpeg": _read_pil, ".dcm": _read_dicom, ".dicom": _read_dicom,
            ".nii": _read_nifti, ".nii.gz": _read_nifti}


def _has_dicom_preamble(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_radiograph(path: str, reduce_to: int | None = None) -> np.ndarray:
    """Read PNG/JPG/DICOM/NIfTI into (H, W) float32 in [0, 1]; raise :class:`RadiographReadError`.

    ``reduce_to``: the longest side the caller will resize the image to. A JPEG may then be
    decoded at a reduced scale whose sides stay at or above that size (the result is resized
    anyway); other formats ignore it.
    """
    if not os.path.isfile(path):
        raise RadiographReadError(f"{path}: file not found (check dataset_dir and the datalist paths)")
    lower = path.lower()
    ext = ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]
    reader = _READERS.get(ext)
    if reader is None and ext == "" and _has_dicom_preamble(path):
        reader = _read_dicom  # DICOM files often come without an extension
    if reader is None:
        raise RadiographReadError(f"{path}: unknown extension {ext!r}; expected one of {sorted(_READERS)}")
    try:
        return reader(path, reduce_to) if reader is _read_pil else reader(path)
    except RadiographReadError as err:
        if path in str(err):
            raise
        raise RadiographReadError(f"{path}: {err}") from err
    except Exception as err:
        raise RadiographReadError(f"{path}: cannot read image: {err}") from err
