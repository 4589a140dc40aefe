"""DICOM headers read without pixel data (patient ids and image sizes for the DICOM datasets)."""

from __future__ import annotations

from typing import Any


def read_header(path: str) -> Any:
    """The DICOM header of ``path`` without its pixel data (fast: no decoding).

    Raises:
        ValueError: the file is not DICOM or lacks ``Rows``/``Columns``.
    """
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as err:  # pydicom raises several types for a corrupt/truncated file
        raise ValueError(f"unreadable DICOM header: {err}") from err
    rows, columns = header.get("Rows"), header.get("Columns")
    if not rows or not columns:
        raise ValueError("no Rows/Columns in the DICOM header (not an image, or not DICOM)")
    return header


def header_text(header: Any, keyword: str) -> str:
    """A DICOM header element as stripped text ("" when absent)."""
    value = header.get(keyword)
    return "" if value is None else str(value).strip()
