"""Datalists, the pretraining dataset (cached decoding, per-epoch seeded augmentation) and batching."""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import PersistentDataset
from monai.transforms import Compose, MapTransform, RandAffined, RandAdjustContrastd, Resized, SpatialPadd

from .io import RadiographReadError, read_radiograph
from .text import encode_reports, report_key
from .utils import as_choice, epoch_seed

SPLITS = ("training", "validation", "test")


class DatalistError(ValueError):
    """A datalist is missing, malformed, or names files that do not exist."""


def resolve_split(split: str) -> tuple[str, ...]:
    """``test`` | ``validation`` | ``training`` | ``all`` -> datalist keys."""
    split = str(split).strip().lower()
    aliases = {"train": "training", "val": "validation", "valid": "validation"}
    split = aliases.get(split, split)
    if split == "all":
        return SPLITS
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS) + ['all']}, got {split!r}")
    return (split,)


def load_datalist(
    datalist: str, dataset_dir: str, split: str, require: Sequence[str] = ("image",), missing: str = "error"
) -> list[dict[str, Any]]:
    """Items of ``split`` with paths made absolute (relative paths are under ``dataset_dir``).

    Every item is checked up front, so that a bad row fails before training starts with its
    split, row number and the fix, not in the middle of an epoch.

    Args:
        datalist: MONAI datalist JSON (DESIGN §4). dataset_dir: root of relative paths.
        split: see :func:`resolve_split`. require: fields every item must have (``report`` for
            pretraining); ``image``/``mask`` files must exist.
        missing: an item without a required field is an ``error`` (naming the row) or is
            ``skip``-ped and counted in a log line (a datalist shared with classification may
            hold images without reports; pretraining then uses the pairs only).
    """
    missing = as_choice(missing, ("error", "skip"), "missing")
    skipped: list[str] = []
    if not os.path.isfile(datalist):
        raise DatalistError(f"datalist {datalist!r} not found (set --datalist, or --dataset_dir for the demo)")
    try:
        with open(datalist, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as err:
        raise DatalistError(f"datalist {datalist!r} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise DatalistError(f"datalist {datalist!r}: expected an object with 'training'/'validation'/'test' lists")
    items: list[dict[str, Any]] = []
    for key in resolve_split(split):
        rows = content.get(key, [])
        if not isinstance(rows, list):
            raise DatalistError(f"datalist {datalist!r}: '{key}' must be a list of items")
        for row, item in enumerate(rows):
            where = f"datalist {datalist!r}, {key}[{row}]"
            if not isinstance(item, dict):
                raise DatalistError(f"{where}: expected an object, got {type(item).__name__}")
            absent = [f for f in require if item.get(f) is None or (isinstance(item.get(f), str) and not item[f].strip())]
            if absent:
                if missing == "skip":
                    skipped.append(f"{key}[{row}]")
                    continue
                raise DatalistError(f"{where}: missing or empty '{absent[0]}' (fix the row or drop it)")
            item = dict(item, split=key, row=row)
            for field in ("image", "mask"):
                if field in item and item[field]:
                    path = item[field] if os.path.isabs(item[field]) else os.path.join(dataset_dir, item[field])
                    if not os.path.isfile(path):
                        raise DatalistError(f"{where}: {field} file {path!r} not found (check dataset_dir)")
                    item[field] = path
            items.append(item)
    if skipped:
        logging.getLogger("reclf").warning(
            "datalist %r: %d item(s) without %s skipped (e.g. %s)", datalist, len(skipped), "/".join(require), skipped[0]
        )
    return items


class LoadRadiographd(MapTransform):
    """Read ``keys`` with :func:`custom.io.read_radiograph` into channel-first (1, H, W) float32."""

    def __init__(self, keys: Sequence[str] = ("image",)) -> None:
        super().__init__(keys)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = read_radiograph(out[key])[None]
        return out


def image_transform(image_size: int) -> Compose:
    """Deterministic part (cached): read, resize the longest side to ``image_size``, pad to square."""
    size = int(image_size)
    return Compose(
        [
            LoadRadiographd(("image",)),
            Resized(("image",), spatial_size=size, size_mode="longest", mode="area"),
            SpatialPadd(("image",), spatial_size=(size, size)),
        ]
    )


def augment_transform() -> Compose:
    """Mild random augmentation. No flips: a flip would swap "left" and "right" in the report."""
    return Compose(
        [
            RandAffined(
                ("image",), prob=0.8, rotate_range=0.08, scale_range=0.08, translate_range=0.04,
                padding_mode="zeros", mode="bilinear",
            ),
            RandAdjustContrastd(("image",), prob=0.5, gamma=(0.8, 1.25)),
        ]
    )


def decode_images(
    items: list[dict[str, Any]],
    transform: Compose,
    cache_dir: str | None = None,
    bad_images: str = "error",
    workers: int = 0,
    keys: Sequence[str] = ("image",),
    noun: str = "image",
) -> tuple[Sequence[dict[str, Any]], list[dict[str, Any]]]:
    """Decode and resize every image once, before training, and apply the bad-image policy.

    ``transform`` maps ``{key: item[key] for key in keys}`` (file paths; e.g. an image and its mask)
    to the decoded record; ``noun`` names one record in messages.

    Returns the cached records (a list in memory, or a MONAI ``PersistentDataset`` whose disk cache
    is now filled) and the items that decoded. A broken file therefore fails (or is skipped) here,
    with its datalist row named, and never in the middle of an epoch.
    """
    bad_images = as_choice(bad_images, ("error", "skip"), "bad_images")
    images = [{key: it[key] for key in keys} for it in items]
    source = PersistentDataset(images, transform, cache_dir=cache_dir) if cache_dir else None

    def decode(n: int):
        try:
            return source[n] if source is not None else transform(images[n])
        except Exception as err:  # MONAI wraps transform errors; find the reader's own message
            cause = err
            while cause is not None and not isinstance(cause, RadiographReadError):
                cause = cause.__cause__ or cause.__context__
            return cause or err

    with ThreadPoolExecutor(max_workers=int(workers) or os.cpu_count() or 1) as pool:
        decoded = list(pool.map(decode, range(len(items))))
    failed = [n for n, d in enumerate(decoded) if isinstance(d, Exception)]
    if failed:
        first = items[failed[0]]
        where = f"{first.get('split', '?')}[{first.get('row', failed[0])}]"
        if bad_images == "error":
            raise DatalistError(
                f"{len(failed)} {noun}(s) cannot be read, first at {where}: {decoded[failed[0]]}. Fix or drop the "
                "row(s), or set bad_images: skip to skip and count them"
            ) from decoded[failed[0]]
        logging.getLogger("reclf").warning(
            "%d unreadable %s(s) skipped (bad_images=skip), e.g. %s: %s", len(failed), noun, where, decoded[failed[0]]
        )
    failed_set = set(failed)
    keep = [n for n in range(len(items)) if n not in failed_set]
    if source is not None:
        kept = source if not failed else PersistentDataset([images[n] for n in keep], transform, cache_dir=cache_dir)
        return kept, [items[n] for n in keep]
    return [decoded[n] for n in keep], [items[n] for n in keep]


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
        cache_dir: a folder for a MONAI ``PersistentDataset`` (decoded images on disk, reused by
            later runs, for data larger than memory); None keeps them in memory.
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
        encoded = encode_reports(tokenizer, self.reports, max_length=max_length)
        valid = encoded["attention_mask"].astype(bool)
        # unpadded token rows; the collate pads each batch only to its own longest report
        self.tokens = [
            {k: encoded[k][n][valid[n]] for k in ("input_ids", "attention_mask", "word_ids")}
            for n in range(len(items))
        ]
        empty = [n for n, t in enumerate(self.tokens) if (t["word_ids"] < 0).all()]
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
        return {"image": pixels, "report_id": int(self.report_ids[index]), "index": int(index), **self.tokens[index]}

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


def make_loader(
    dataset: PretrainDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on (seed, epoch): a DistributedSampler, one replica
    unless ``distributed``. The trainer calls ``set_epoch`` on the sampler and the dataset."""
    from monai.data import DataLoader

    from .distributed import rank, world_size

    replicas, me = (world_size(), rank()) if distributed else (1, 0)
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=replicas, rank=me, shuffle=shuffle, seed=int(seed), drop_last=drop_last
    )
    loader = DataLoader(
        dataset, batch_size=int(batch_size), sampler=sampler, num_workers=int(num_workers),
        collate_fn=dataset.collate, drop_last=drop_last,
        # a private generator: worker seeding must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(int(seed)),
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(dataset)} items make no full batch of batch_size={batch_size} per process: lower batch_size"
        )
    return loader
