"""A decode-once, on-disk cache of preprocessed images (and masks) as uint8, at the training size.

A full-size radiograph (~2,500 x 3,000 px JPG) takes tens of milliseconds to decode and resize;
at 224 px its uint8 record is 50 kB and reads back in well under a millisecond. So every record
is decoded once, written to ``<cache_dir>/<key[:2]>/<key>.npz``, and read from there by every
later epoch, run, DataLoader worker and process.

The key is a sha256 over everything the record depends on:
  * for each source file (the image; for segmentation also the mask): its absolute path, size in
    bytes and mtime in ns, so a replaced or edited file misses;
  * the preprocessing settings: :func:`describe_transform` of the deterministic transform chain
    (class names and their parameters: the training size, resize mode, pad size and mode, ...),
    plus :data:`CACHE_VERSION` (bumped when the reader or the record format changes behaviour).
  So a cache built at 64 px never serves a 128 px run: the size is in the key.

Writes are atomic: a record goes to a unique temp file in the final folder (``mkstemp``) and is
renamed over the final name (``os.replace``), so concurrent writers (DataLoader workers, several
processes, two runs sharing a cache) never expose a half-written file, and an interrupted build
leaves at most a ``*.tmp`` file that is never read. A file that is corrupt or truncated anyway
(a crash of the file system, a copy gone wrong) fails its zip CRC check on read: it is decoded
again from the source, rewritten, and a warning names it.

Quantisation: image values are in [0, 1] after :func:`custom.io.read_radiograph` and the area
resize; they are stored as ``round(x * 255)`` uint8 and read back as float32 ``/ 255`` (error at
most 1/255 / 2, below the 8-bit resolution of the JPG/PNG sources). uint8/bool fields (masks,
{0, 1}) are stored exactly and read back as uint8.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import io
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

logger = logging.getLogger("reclf")

#: Bump when the reader (:mod:`custom.io`), the record layout or the quantisation changes what a
#: record holds for the same file and settings: every old record then misses.
CACHE_VERSION = "reclf-image-cache-1"

_UNIT, _EXACT = "unit", "exact"  # how a field was stored: [0,1] float quantised to uint8 | uint8 as is


# ---- keys ---------------------------------------------------------------------------------------


def describe_transform(transform: Any) -> str:
    """A deterministic text of a transform chain and its parameters, for the cache key.

    Walks the public attributes of MONAI / ``custom`` transform objects (a ``Compose``'s
    ``transforms``, ``ResizeLongestd.size`` and ``mode``, ``SpatialPadd.padder.spatial_size``, a
    ``Resized``'s ``resizer``...), so changing the training size, the resize mode or the padding
    changes the text. Random states and private attributes are left out (they do not change the
    deterministic output). A random transform is refused: its output cannot be cached.
    """
    from monai.transforms import Randomizable

    def walk(obj: Any, depth: int) -> Any:
        if isinstance(obj, enum.Enum):
            return str(obj.value)
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, (list, tuple)):
            return [walk(v, depth) for v in obj]
        if isinstance(obj, type):  # a dtype given as a class (np.float32)
            return f"{obj.__module__}.{obj.__qualname__}"
        if isinstance(obj, Mapping):
            return {str(k): walk(v, depth) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if not kind.startswith(("monai.", "custom.")) or depth > 4:
            return str(obj) if kind.startswith("torch.") else kind  # torch.float32 -> its name
        if isinstance(obj, Randomizable) and not hasattr(obj, "transforms"):
            raise ValueError(f"{kind} is random: only a deterministic transform chain can be cached")
        # transforms are callable too (a SpatialPadd's ``padder``): only plain functions are skipped
        fields = {k: walk(v, depth + 1) for k, v in sorted(vars(obj).items())
                  if not k.startswith("_") and k != "R" and not inspect.isroutine(v)}
        return {"class": kind, **fields}

    return json.dumps(walk(transform, 0), sort_keys=True, separators=(",", ":"))


def file_signature(path: str) -> list[Any]:
    """``[absolute path, size in bytes, mtime in ns]`` of ``path`` (OSError if it is gone)."""
    absolute = os.path.abspath(path)
    stat = os.stat(absolute)
    return [absolute, int(stat.st_size), int(stat.st_mtime_ns)]


def record_key(sources: Mapping[str, str], settings: str) -> str:
    """The sha256 hex key of the record decoded from ``sources`` (field -> file path, e.g.
    ``{"image": ..., "label": mask}``) with preprocessing ``settings`` (:func:`describe_transform`)."""
    payload = {
        "version": CACHE_VERSION,
        "settings": settings,
        "files": {field: file_signature(path) for field, path in sorted(sources.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


# ---- records ------------------------------------------------------------------------------------


def encode_record(record: Mapping[str, Any], fields: Sequence[str]) -> dict[str, np.ndarray]:
    """uint8 arrays of a decoded record's ``fields``: float ones (images in [0, 1], any shape, e.g.
    (1, S, S)) as ``round(x * 255)``, uint8/bool ones (masks) exactly. Also a ``_kinds`` entry
    that says which is which, so :func:`decode_record` inverts it."""
    out: dict[str, np.ndarray] = {}
    kinds = []
    for field in fields:
        value = record[field]
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        if array.dtype == np.uint8 or array.dtype == np.bool_:
            out[field] = array.astype(np.uint8)
            kinds.append(_EXACT)
        else:
            # clip: an area resize keeps [0, 1] up to float rounding, which must not wrap to 255
            out[field] = np.rint(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
            kinds.append(_UNIT)
    out["_kinds"] = np.asarray(kinds)
    out["_fields"] = np.asarray(list(fields))
    return out


def decode_record(stored: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The record of :func:`encode_record`'s arrays: ``unit`` fields as float32 in [0, 1],
    ``exact`` ones as uint8."""
    out = {}
    for field, kind in zip(stored["_fields"].tolist(), stored["_kinds"].tolist()):
        array = stored[field]
        out[field] = array.astype(np.float32) / np.float32(255.0) if kind == _UNIT else array
    return out


class CacheFileError(ValueError):
    """A cache file that is truncated, corrupt or not a record of this format."""


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of ``path``, read fully (so the zip CRC of each member is checked)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CacheFileError(f"{path}: {type(err).__name__}: {err}") from err
    if "_fields" not in arrays or "_kinds" not in arrays or any(f not in arrays for f in arrays["_fields"].tolist()):
        raise CacheFileError(f"{path}: not a record of {CACHE_VERSION}")
    return arrays


def _write_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed npz to a unique temp file beside ``path``, then rename
    it over ``path``: a reader sees the old file, the new one, or none, never half of one. Two
    writers of the same key write the same bytes, so whichever rename lands last is fine."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    # uncompressed: uint8 radiographs compress poorly with zip and reading must stay cheap
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: leave no temp file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---- the cache ----------------------------------------------------------------------------------


class ImageCache:
    """Records of one deterministic ``transform`` in ``cache_dir``, keyed by :func:`record_key`.

    Args:
        cache_dir: the folder (created on first write); may be shared by runs, processes and
            DataLoader workers, and by different image sizes / settings (they get other keys).
        transform: maps ``{field: path for field in fields}`` to a record (a MONAI ``Compose``,
            e.g. :func:`custom.data.image_transform`); it must be deterministic.
        fields: the record's fields that are file paths and are stored (``("image",)``, or
            ``("image", "label")`` for segmentation pairs).
    """

    def __init__(self, cache_dir: str, transform: Callable[[dict[str, Any]], Mapping[str, Any]],
                 fields: Sequence[str] = ("image",)) -> None:
        self.cache_dir = os.path.abspath(str(cache_dir))
        self.transform = transform
        self.fields = tuple(fields)
        self.settings = describe_transform(transform) + "|fields=" + ",".join(self.fields)

    def key(self, sources: Mapping[str, str]) -> str:
        """The key of the record of ``sources`` (field -> path); OSError if a file is gone."""
        return record_key({f: sources[f] for f in self.fields}, self.settings)

    def path(self, key: str) -> str:
        """``<cache_dir>/<key[:2]>/<key>.npz``: 256 sub-folders keep directories small at 377k files."""
        return os.path.join(self.cache_dir, key[:2], key + ".npz")

    def decode(self, sources: Mapping[str, str]) -> dict[str, np.ndarray]:
        """Run the transform on ``sources`` and return the stored (uint8) form, not written."""
        record = self.transform({f: sources[f] for f in self.fields})
        return encode_record(record, self.fields)

    def ensure(self, sources: Mapping[str, str], key: str | None = None) -> bool:
        """Make sure the record of ``sources`` is on disk; True if it had to be decoded.

        Only the file's existence is checked here (a stat, cheap for 377k files); a corrupt file is
        caught, decoded again and rewritten when :meth:`read` opens it. Transform errors propagate.
        """
        key = key or self.key(sources)
        path = self.path(key)
        if os.path.isfile(path):
            return False
        _write_atomic(path, self.decode(sources))
        return True

    def read(self, sources: Mapping[str, str], key: str | None = None) -> dict[str, np.ndarray]:
        """The record of ``sources``: ``unit`` fields (images) float32 in [0, 1], ``exact`` ones
        (masks) uint8, shapes as the transform made them (e.g. (1, S, S)). A missing record is
        decoded and written; a corrupt one is logged, decoded again and rewritten."""
        key = key or self.key(sources)
        path = self.path(key)
        try:
            return decode_record(_read_npz(path))
        except FileNotFoundError:
            pass
        except CacheFileError as err:
            logger.warning("image cache: unreadable record %s (%s): decoding %s again", path, err,
                           sources.get(self.fields[0]))
        stored = self.decode(sources)
        _write_atomic(path, stored)
        return decode_record(stored)

    def size(self) -> dict[str, int]:
        """``{"files": records, "bytes": their total size, "temp_files": leftovers of interrupted
        writes}`` of the whole folder (every setting and size sharing it)."""
        return cache_size(self.cache_dir)


def cache_size(cache_dir: str) -> dict[str, int]:
    """Record files, their bytes, and stale ``*.tmp`` files (interrupted writes) under ``cache_dir``."""
    files = total = temps = 0
    if os.path.isdir(cache_dir):
        for root, _, names in os.walk(cache_dir):
            for name in names:
                if name.endswith(".npz"):
                    files += 1
                    try:
                        total += os.path.getsize(os.path.join(root, name))
                    except OSError:  # replaced by another writer meanwhile
                        pass
                elif name.endswith(".tmp"):
                    temps += 1
    return {"files": files, "bytes": total, "temp_files": temps}


def map_threads(function: Callable[[int], Any], count: int, workers: int = 0, chunk: int = 2048,
                progress: Callable[[int], None] | None = None) -> Iterable[tuple[int, Any]]:
    """``(n, function(n))`` for n in range(count), computed by ``workers`` threads (0: one per core),
    ``chunk`` at a time: a pool's ``map`` over 377k items would hold 377k futures at once.
    ``progress(k)`` is called with the number finished after each chunk."""
    workers = int(workers) or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            yield from zip(range(start, stop), pool.map(function, range(start, stop)))
            if progress is not None:
                progress(stop - start)


# ---- command line -------------------------------------------------------------------------------


def build_cache(
    datalist: str, cache_dir: str, image_size: int = 224, dataset_dir: str | None = None, split: str = "all",
    workers: int = 0, task: str = "pretrain", bad_images: str = "error", progress: bool = True,
) -> dict[str, Any]:
    """Decode every image of ``split`` into ``cache_dir`` ahead of training.

    It goes through :func:`custom.data.decode_images` with the very transform the training uses
    (:func:`custom.data.image_transform` for ``task=pretrain`` — also the classification bundle's
    images — or :func:`custom.data.segmentation.pair_transform` for ``task=seg``, image + mask), so it
    writes exactly the keys a run with the same ``image_size`` looks up.

    Returns ``{"items", "decoded", "seconds", "files", "bytes", "temp_files"}`` (``decoded``: records
    written by this call; the size fields are of the whole folder).
    """
    import time

    from .datalist import load_datalist
    from .datasets import decode_images
    from .transforms import image_transform
    from ..utils import as_choice, as_int

    task = as_choice(task, ("pretrain", "seg"), "task")
    size = as_int(image_size, "image_size", minimum=8)
    dataset_dir = dataset_dir or os.path.dirname(os.path.abspath(datalist))
    # every item with an image (a report is not needed to cache its image): a superset of the
    # pretraining items, and the same key per image
    items = load_datalist(datalist, dataset_dir, split, require=("image",), missing="skip")
    if task == "seg":
        from .segmentation import pair_transform, with_masks

        records = [{**it["item"], "image": it["image"], "label": it["label"]} for it in with_masks(items)]
        transform, fields, noun = pair_transform(size), ("image", "label"), "image/mask pair"
    else:
        records, transform, fields, noun = items, image_transform(size), ("image",), "image"
    before = cache_size(cache_dir)["files"]
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit=noun.split("/")[0], desc=f"caching {size} px", dynamic_ncols=True)
    try:
        _, kept = decode_images(records, transform, cache_dir, bad_images, workers, keys=fields, noun=noun,
                                progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    report = cache_size(cache_dir)
    return {"items": len(kept), "skipped": len(records) - len(kept), "decoded": report["files"] - before,
            "seconds": round(seconds, 3), **report}


def main_cache(
    datalist: str, cache_dir: str, image_size: int = 224, dataset_dir: str | None = None, split: str = "all",
    workers: int = 0, task: str = "pretrain", bad_images: str = "error",
) -> dict[str, Any]:
    """``python -m custom cache --datalist D --cache_dir C --image_size 224 [--dataset_dir R]
    [--split all] [--workers N] [--task pretrain|seg] [--bad_images error|skip]``: decode the
    datalist's images once into the uint8 cache that training (``--cache_dir C`` with the same
    ``image_size``) then reads without decoding. Prints the time taken and the cache size."""
    result = build_cache(datalist, cache_dir, image_size, dataset_dir, split, workers, task, bad_images)
    print(f"cached {result['items']} record(s) at {int(image_size)} px in {result['seconds']:.1f} s "
          f"({result['decoded']} decoded now, {result['items'] - result['decoded']} already cached"
          f"{', ' + str(result['skipped']) + ' unreadable skipped' if result['skipped'] else ''}); "
          f"{cache_dir}: {result['files']} file(s), {result['bytes'] / 2**20:.1f} MB")
    return result
