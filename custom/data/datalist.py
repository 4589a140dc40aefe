"""MONAI datalists (DESIGN §4): splits, and items checked up front with their row named in every error."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any


from .textfiles import read_json
from ..utils import as_choice

logger = logging.getLogger("reclf")


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
    datalist: str, dataset_dir: str, split: str, require: Sequence[str] = ("image",), missing: str = "error",
    allow_empty: bool = True,
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
        allow_empty: if False, a split that is missing or holds no usable item is an error
            naming the datalist and the split (a run that needs it would fail later, obscurely).
    """
    missing = as_choice(missing, ("error", "skip"), "missing")
    skipped: list[str] = []
    if not os.path.isfile(datalist):
        raise DatalistError(f"datalist {datalist!r} not found (set --datalist, or --dataset_dir for the demo)")
    try:
        content = read_json(datalist, "the datalist")
    except ValueError as err:  # not UTF-8 (names the encoding found) or not JSON (line, column)
        raise DatalistError(str(err)) from None
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
            for field in ("image", "mask", "report"):
                # a number or a list here is a broken export, not a report/path to str() silently
                if field in item and item[field] is not None and not isinstance(item[field], str):
                    raise DatalistError(
                        f"{where}: '{field}' must be a string, got {type(item[field]).__name__} "
                        f"{_short(item[field])} (fix the row or drop it)"
                    )
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
    if not items and not allow_empty:
        keys = resolve_split(split)
        present = [k for k in keys if content.get(k)]
        state = (f"holds no item with {'/'.join(require)} ({len(skipped)} skipped)" if present else
                 "is missing or empty")
        raise DatalistError(
            f"datalist {datalist!r}: the {'/'.join(keys)} split {state}. Add items to it (patient-disjoint from the "
            "other splits; `python -m custom prepare ...` writes all three), or point --datalist at a datalist that has them"
        )
    return items


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
