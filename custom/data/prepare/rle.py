"""Run-length masks of the SIIM-ACR Pneumothorax Segmentation challenge (original release).

The competition's ``train-rle.csv`` has the header ``ImageId, EncodedPixels`` (note the space);
``EncodedPixels`` is ``-1`` for an image without pneumothorax, else space-separated pairs
``offset length`` in the competition's *relative* format:

* pixels are numbered in column-major order: flat index = ``col * height + row`` (down the
  first column first), i.e. the flat vector reshaped to ``(width, height)`` and transposed;
* each pair is a run of ``length`` foreground pixels starting ``offset`` pixels after the END of
  the previous run (the first offset counts from pixel 0).

An image can have several rows (one per pneumothorax region); their masks are OR-ed.
(The later "stage 2" release re-encoded the labels in the usual absolute format in
``stage_2_train.csv``; that file is not this format.)
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np

from .common import PrepareError, read_csv

NO_MASK = "-1"
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only (int() would also take "1_0" or "+1")


def parse_rle(text: str, height: int, width: int, source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Absolute runs of a relative RLE string: ``(starts, lengths)``, int64 arrays of shape (n,),
    starts as column-major flat indices. ``-1`` gives empty arrays.

    Raises:
        PrepareError: (a ``ValueError``) naming ``source`` for a non-integer token, an odd number of
            values, a negative offset, a run of length < 1, or a run that ends past the image.
    """
    where = f"{source}: " if source else ""
    stripped = str(text).strip()
    if stripped == NO_MASK:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = stripped.split()
    if not tokens:
        raise PrepareError(f"{where}empty EncodedPixels (expected '-1' or 'offset length' pairs)")
    bad = next((t for t in tokens if not _INTEGER.fullmatch(t)), None)
    if bad is not None:
        raise PrepareError(f"{where}EncodedPixels has the non-integer value {bad!r}")
    values = np.array(tokens, dtype=np.int64)
    if values.size % 2:
        raise PrepareError(f"{where}EncodedPixels has {values.size} values; expected 'offset length' pairs")
    offsets, lengths = values[0::2], values[1::2]
    if (offsets < 0).any():
        raise PrepareError(f"{where}EncodedPixels has a negative offset ({int(offsets[offsets < 0][0])})")
    if (lengths < 1).any():
        raise PrepareError(f"{where}EncodedPixels has a run of length {int(lengths[lengths < 1][0])} (< 1)")
    # start_i = sum of all offsets up to i + sum of the lengths before i
    ends = np.cumsum(offsets + lengths)
    starts = ends - lengths
    if ends[-1] > height * width:
        raise PrepareError(
            f"{where}EncodedPixels runs to pixel {int(ends[-1])}, past the {height}x{width} image "
            f"({height * width} pixels)"
        )
    return starts, lengths


def decode_rle(text: str, height: int, width: int, source: str = "") -> np.ndarray:
    """Decode one relative column-major RLE string to a ``(height, width)`` bool mask
    (``mask[row, col]``); ``-1`` gives an all-False mask. Errors as in :func:`parse_rle`."""
    starts, lengths = parse_rle(text, height, width, source)
    size = height * width
    # difference array: +1 where a run starts, -1 where it ends; the running sum is the mask
    # (runs never overlap: every start lies at or after the previous end)
    change = np.bincount(starts, minlength=size + 1) - np.bincount(starts + lengths, minlength=size + 1)
    flat = np.cumsum(change[:size]) > 0
    return flat.reshape(width, height).T


def encode_rle(mask: np.ndarray) -> str:
    """Encode a ``(height, width)`` mask (nonzero = foreground) in the relative column-major
    format; ``"-1"`` for an empty mask. Inverse of :func:`decode_rle` for canonical strings
    (runs separated by at least one background pixel, as in the competition's files)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle: expected a (height, width) mask, got shape {mask.shape}")
    flat = np.ascontiguousarray(mask.T).ravel() != 0  # column-major order
    edges = np.diff(flat.astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return NO_MASK
    offsets = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.stack([offsets, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def read_siim_rle(path: str) -> dict[str, list[tuple[str, str]]]:
    """``train-rle.csv`` (or ``.csv.gz``) → ``{ImageId: [(source, EncodedPixels), ...]}`` in file
    order, every row of an image kept (their masks are OR-ed); ``source`` is ``"file.csv:LINE"``.

    Raises:
        PrepareError: for a missing column, a malformed row or an empty ``ImageId`` (naming the row).
    """
    rows: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for source, row in read_csv(path, ["ImageId", "EncodedPixels"]):
        image_id = row["ImageId"]
        if not image_id:
            raise PrepareError(f"{source}: empty ImageId in {os.path.basename(path)}")
        rows[image_id].append((source, row["EncodedPixels"]))
    return dict(rows)
