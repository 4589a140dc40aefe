"""Datasets: decoded-once records (in memory or in the uint8 image cache), per-(epoch, index) seeded
augmentation, and the pretraining dataset of image/report pairs.

The datalist reader (:mod:`.datalist`), the transforms (:mod:`.transforms`) and the loaders
(:mod:`.loaders`) were part of this module; their names stay importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from .image_cache import ImageCache, decode_record, encode_record, map_threads
from .io import RadiographReadError
from .text import encode_reports, report_key
from ..utils import as_choice, as_optional_path, epoch_seed
from .datalist import SPLITS, DatalistError, load_datalist, resolve_split  # noqa: F401 (the old custom.data names)
from .loaders import make_loader, resolve_workers  # noqa: F401
from .transforms import LoadRadiographd, ResizeLongestd, augment_transform, image_transform  # noqa: F401

logger = logging.getLogger("reclf")


class MemoryRecords(Sequence):
    """Decoded records kept in memory as uint8 (:func:`custom.image_cache.encode_record`: 4x
    smaller than float32); ``[n]`` returns them as the transform made them (images float32 in
    [0, 1], masks uint8), fresh arrays each time so augmentation can never alter the store."""

    def __init__(self, stored: list[dict[str, np.ndarray]]) -> None:
        self.stored = stored

    def __len__(self) -> int:
        return len(self.stored)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return decode_record(self.stored[index])


class CachedRecords(Sequence):
    """Records read from an :class:`custom.image_cache.ImageCache` on every ``[n]``.

    Holds only the source paths (references to the items' own strings) and the 32-byte keys, so
    its memory stays flat however many images the set holds; the records live on disk. Safe in
    DataLoader workers (a worker reads; a missing or corrupt record is decoded and rewritten
    atomically). ``[n]``: ``{field: array}``, images (1, S, S) float32 in [0, 1], masks uint8.
    """

    def __init__(self, cache: ImageCache, paths: dict[str, list[str]], keys: np.ndarray) -> None:
        """``paths``: field -> one source path per record; ``keys``: (N, 32) uint8 sha256 digests."""
        self.cache, self.paths, self.keys = cache, paths, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        sources = {field: paths[index] for field, paths in self.paths.items()}
        return self.cache.read(sources, key=self.keys[index].tobytes().hex())


def _read_error(err: Exception) -> Exception:
    """The reader's own message (MONAI wraps transform errors in its own RuntimeError)."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, RadiographReadError):
        cause = cause.__cause__ or cause.__context__
    return cause if isinstance(cause, Exception) else err


def decode_images(
    items: list[dict[str, Any]],
    transform: Compose,
    cache_dir: str | None = None,
    bad_images: str = "error",
    workers: int = 0,
    keys: Sequence[str] = ("image",),
    noun: str = "image",
    progress: Any = None,
) -> tuple[Sequence[dict[str, Any]], list[dict[str, Any]]]:
    """Decode and resize every image once, before training, and apply the bad-image policy.

    ``transform`` maps ``{key: item[key] for key in keys}`` (file paths; e.g. an image and its mask)
    to the decoded record; it must be deterministic; ``noun`` names one record in messages.

    With ``cache_dir`` each record is made sure to exist in the on-disk uint8 cache
    (:class:`custom.image_cache.ImageCache`; missing ones are decoded by ``workers`` threads, 0 =
    one per core, which return only ok/error, not the arrays), and the returned
    :class:`CachedRecords` holds keys only and reads the records in ``[n]``: memory stays flat as
    the set grows, and a later run (or ``python -m custom cache``) with the same files and settings
    decodes nothing. Without it the records are kept in memory as uint8 (:class:`MemoryRecords`).
    Either way ``[n]`` gives ``{key: array}``: images (1, S, S) float32 in [0, 1] (quantised to
    1/255), masks uint8. ``progress(k)`` (optional) is called as chunks of k items finish.

    Returns the records and the items that decoded. A broken file therefore fails (or is skipped)
    here, with its datalist row named, and never in the middle of an epoch.
    """
    bad_images = as_choice(bad_images, ("error", "skip"), "bad_images")
    keys = tuple(keys)
    cache_dir = as_optional_path(cache_dir)
    cache = ImageCache(cache_dir, transform, keys) if cache_dir else None
    # 32 bytes a key (a hex str would be ~113); uint8 rows, not dtype "S32", which drops trailing
    # NUL bytes: a digest ending in 00 would come back as another key
    digests = np.zeros((len(items), 32), dtype=np.uint8)
    stored: list[Any] = [None] * len(items) if cache is None else []

    def decode(n: int) -> Exception | None:
        sources = {key: items[n][key] for key in keys}
        try:
            if cache is None:
                stored[n] = encode_record(transform(sources), keys)
            else:
                key = cache.key(sources)
                cache.ensure(sources, key)
                digests[n] = np.frombuffer(bytes.fromhex(key), dtype=np.uint8)
        except Exception as err:  # noqa: BLE001 - every failure is reported by the policy below
            return _read_error(err)
        return None

    errors = {n: err for n, err in map_threads(decode, len(items), workers, progress=progress) if err is not None}
    failed = sorted(errors)
    if failed:
        first = items[failed[0]]
        where = f"{first.get('split', '?')}[{first.get('row', failed[0])}]"
        if bad_images == "error":
            raise DatalistError(
                f"{len(failed)} {noun}(s) cannot be read, first at {where}: {errors[failed[0]]}. Fix or drop the "
                "row(s), or set bad_images: skip to skip and count them"
            ) from errors[failed[0]]
        logging.getLogger("reclf").warning(
            "%d unreadable %s(s) skipped (bad_images=skip), e.g. %s: %s", len(failed), noun, where, errors[failed[0]]
        )
    keep = [n for n in range(len(items)) if n not in errors]
    kept = [items[n] for n in keep] if failed else list(items)
    if cache is None:
        return MemoryRecords([stored[n] for n in keep]), kept
    paths = {key: [it[key] for it in kept] for key in keys}
    return CachedRecords(cache, paths, digests[keep] if failed else digests), kept


class EpochSeededDataset(torch.utils.data.Dataset):
    """A dataset of ``items`` whose augmentation is seeded by (``seed``, ``epoch``, index), so a
    batch depends on neither the worker count nor a resume; the sampler's ``set_epoch`` sets the
    epoch (see :func:`make_loader`). Subclasses set ``items``, ``seed`` and ``epoch`` in ``__init__``."""

    items: list[dict[str, Any]]
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)


class PretrainDataset(EpochSeededDataset):
    """Image/report pairs: cached decoding, per-(epoch, index) seeded augmentation, tokenisation.

    Augmentation randomness depends only on (seed, epoch, index), whatever the worker count, so
    a resumed run replays the same batches exactly.

    Args:
        items: from :func:`load_datalist` (``image``, ``report``).
        tokenizer: a fast Hugging Face tokenizer. image_size: square side in pixels.
        augment: apply :func:`augment_transform`. seed: run seed.
        cache_dir: a folder for the uint8 image cache (:func:`decode_images`: decoded once, on
            disk, reused by later runs and shared by workers; memory stays flat, as a real-size
            set needs); None or "" keeps them in memory as uint8.
        max_length: token budget per report. cache_workers: decoding threads (0: one per core).
        bad_images: an unreadable image is an ``error`` naming its datalist row, or is
            ``skip``-ped (the item is dropped and counted in a log line).
    """

    def __init__(
        self,
        items: list[dict[str, Any]],
        tokenizer,
        image_size: int = 128,
        augment: bool = True,
        seed: int = 0,
        cache_dir: str | None = None,
        max_length: int = 128,
        cache_workers: int = 0,
        bad_images: str = "error",
    ) -> None:
        self.images, items = decode_images(items, image_transform(image_size), cache_dir, bad_images, cache_workers)
        self.items = items
        self.reports = [str(it["report"]) for it in items]
        # unpadded token rows, concatenated: row n is [offsets[n], offsets[n+1]) of input_ids /
        # word_ids (int32). A list of per-item arrays costs ~1 kB an item in object overhead (0.4 GB
        # at MIMIC-CXR's 377k); the collate pads each batch only to its own longest report.
        ids, words, lengths = [], [], []
        for start in range(0, len(self.reports), 4096):  # chunks bound the tokenizer's padded peak
            encoded = encode_reports(tokenizer, self.reports[start:start + 4096], max_length=max_length)
            valid = encoded["attention_mask"].astype(bool)  # unpadded rows: attention is all ones
            ids.append(encoded["input_ids"][valid].astype(np.int32))
            words.append(encoded["word_ids"][valid].astype(np.int32))
            lengths.append(valid.sum(1))
        self.token_ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        self.word_ids = np.concatenate(words) if words else np.zeros(0, np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else [])]).astype(np.int64)
        has_word = np.maximum.reduceat(self.word_ids, self.offsets[:-1]) >= 0 if len(items) else np.ones(0, bool)
        empty = np.flatnonzero(~has_word).tolist()
        if empty:
            first = items[empty[0]]
            raise ValueError(
                f"{len(empty)} report(s) have no words after tokenisation, e.g. {first.get('split')}[{first.get('row')}] "
                f"({first.get('image')}): fix or drop them"
            )
        self.report_ids = np.asarray([report_key(r) for r in self.reports], dtype=np.int64)
        self.pad_token_id = int(tokenizer.pad_token_id or 0)
        self.augment = augment_transform() if augment else None
        self.seed = int(seed)
        self.epoch = 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        if self.augment is not None:
            self.augment.set_random_state(seed=(epoch_seed(self.seed, self.epoch) + 104729 * int(index)) % (2**32))
            image = self.augment(image)
        pixels = torch.as_tensor(np.asarray(image["image"]), dtype=torch.float32)
        return {"image": pixels, "report_id": int(self.report_ids[index]), "index": int(index), **self.tokens(index)}

    def tokens(self, index: int) -> dict[str, np.ndarray]:
        """Report ``index``'s unpadded ``input_ids``, ``attention_mask`` (ones) and ``word_ids``
        (-1: special/punctuation token), each (T,) int64 as :func:`custom.text.encode_reports` made them."""
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return {"input_ids": self.token_ids[a:b].astype(np.int64), "attention_mask": np.ones(b - a, np.int64),
                "word_ids": self.word_ids[a:b].astype(np.int64)}

    def collate(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack images; pad token rows to the batch's longest report."""
        from torch.nn.utils.rnn import pad_sequence

        def pad(key: str, value: int) -> torch.Tensor:
            return pad_sequence([torch.from_numpy(b[key]) for b in batch], batch_first=True, padding_value=value)

        return {
            "image": torch.stack([b["image"] for b in batch]),
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": pad("attention_mask", 0),
            "word_ids": pad("word_ids", -1),
            "report_id": torch.tensor([b["report_id"] for b in batch], dtype=torch.int64),
            "index": torch.tensor([b["index"] for b in batch], dtype=torch.int64),
        }
