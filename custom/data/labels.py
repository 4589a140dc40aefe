"""The one parser of datalist labels (DESIGN §4), strict everywhere it is used.

Multi-label items carry ``labels: {class name: 1 | 0 | -1}`` (-1 = uncertain, masked by losses
and metrics; an absent class or null is -1 too); multi-class items carry ``labels: int`` (an
index into the datalist's top-level ``label_names``) or the class name itself.

What is refused, naming the datalist row and key: a label value other than 1 / 0 / -1 (0.5, 2,
"yes", true), a class index outside ``label_names``, a fractional class index, a label key or class
name that matches no class (with the nearest class: wrong case and typos are the usual cause),
and a datalist that mixes dict and int labels. What is converted, and logged once: integer-valued
floats (1.0, 0.0, -1.0: what CSV-derived labels often are) to the integers they equal.
"""

from __future__ import annotations

import difflib
import math
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger("reclf")
_LOGGED: set[str] = set()


class LabelError(ValueError):
    """A datalist label that cannot be used as it is; the message names the row and key."""


def where(item: Mapping[str, Any]) -> str:
    """``test[3] (path)``: the datalist row of an item from :func:`custom.data.load_datalist`."""
    return f"{item.get('split', '?')}[{item.get('row', '?')}] ({item.get('image')})"


def _note_conversion(kind: str) -> None:
    if kind not in _LOGGED:
        _LOGGED.add(kind)
        logger.info("labels: %s", kind)


def _integer(value: Any, what: str) -> int:
    """An int from an int or an integer-valued float (logged); anything else is a LabelError."""
    if isinstance(value, (bool, np.bool_)):
        raise LabelError(f"{what}: expected a number, got the boolean {value!r} (write 1 or 0)")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        _note_conversion("integer-valued floats (1.0 / 0.0 / -1.0) read as the integers they equal")
        return int(value)
    raise LabelError(f"{what}: expected an integer, got {value!r}")


def label_value(value: Any, what: str) -> int:
    """One multi-label cell: 1 / 0 / -1 (None = -1: unknown)."""
    if value is None:
        return -1
    number = _integer(value, what)
    if number not in (1, 0, -1):
        raise LabelError(f"{what}: label values must be 1, 0 or -1 (uncertain), got {value!r}")
    return number


def _unknown_class(name: str, names: Sequence[str], what: str) -> LabelError:
    lower = {n.lower(): n for n in names}
    guess = lower.get(str(name).strip().lower()) or next(iter(difflib.get_close_matches(str(name), list(names), 1, 0.6)), None)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return LabelError(f"{what}: {name!r} matches no class of label_names {list(names)}{hint}")


def task(items: Sequence[Mapping[str, Any]], label_names: Sequence[str] | None, source: str) -> tuple[bool, list[str]]:
    """(multi_label, class names) of the labelled ``items``.

    Dict labels: multi-label over ``label_names`` (else the keys in first-seen order); int/str
    labels: multi-class over ``label_names`` (required). ``source`` names the datalist.
    """
    labelled = [it for it in items if it.get("labels") is not None]
    if not labelled:
        raise LabelError(f"datalist {source!r}: no item has 'labels': nothing to classify")
    kinds = {isinstance(it["labels"], Mapping) for it in labelled}
    if len(kinds) > 1:
        first_dict = next(it for it in labelled if isinstance(it["labels"], Mapping))
        first_int = next(it for it in labelled if not isinstance(it["labels"], Mapping))
        raise LabelError(f"datalist {source!r} mixes dict (multi-label, e.g. {where(first_dict)}) and class-index "
                         f"(multi-class, e.g. {where(first_int)}) labels: use one kind")
    names = [str(n) for n in label_names] if label_names else None
    if kinds == {True}:
        if names is None:
            names = _keys_as_classes(labelled, source)
        return True, names
    if names is None:
        raise LabelError(f"datalist {source!r}: class-index labels need a top-level 'label_names' list (the class names)")
    return False, names


def _keys_as_classes(labelled: Sequence[Mapping[str, Any]], source: str) -> list[str]:
    """The union of the label keys (first-seen order) as the classes, refusing keys that are
    evidently one class spelled two ways: equal up to case/blanks, or a rare key (in at most 1 %
    of rows) within a close spelling of a common one. Without ``label_names`` such a typo would
    otherwise become a silent extra class, and the real class would lose those rows."""
    counts: dict[str, int] = {}
    first: dict[str, Mapping[str, Any]] = {}
    for it in labelled:
        for key in it["labels"]:
            counts[str(key)] = counts.get(str(key), 0) + 1
            first.setdefault(str(key), it)
    names = list(counts)
    fix = "fix the key, or declare the classes with a top-level 'label_names' list in the datalist"
    folded: dict[str, str] = {}
    for name in names:
        other = folded.setdefault(name.strip().lower(), name)
        if other != name:
            rare, common = sorted((name, other), key=lambda n: counts[n])
            raise LabelError(f"datalist {source!r}, {where(first[rare])}: labels key {rare!r} and {common!r} differ only "
                             f"in case or blanks ({counts[rare]} vs {counts[common]} rows): {fix}")
    rare_limit = max(1, len(labelled) // 100)
    for name in names:
        if counts[name] > rare_limit:
            continue
        common = [n for n in names if counts[n] > 10 * counts[name]]
        guess = difflib.get_close_matches(name, common, 1, 0.8)
        if guess:
            raise LabelError(f"datalist {source!r}, {where(first[name])}: labels key {name!r} ({counts[name]} row(s)) "
                             f"looks like a misspelling of {guess[0]!r} ({counts[guess[0]]} rows): {fix}")
    return names


def targets(items: Sequence[Mapping[str, Any]], names: Sequence[str], multi_label: bool) -> np.ndarray:
    """(N, C) int64 of 1 / 0 / -1 (multi-label) or (N,) int64 class indices (multi-class)."""
    names = list(names)
    if multi_label:
        out = np.full((len(items), len(names)), -1, dtype=np.int64)
        index = {n: c for c, n in enumerate(names)}
        for row, it in enumerate(items):
            labels = it.get("labels")
            if not isinstance(labels, Mapping):
                raise LabelError(f"{where(it)}: expected dict labels {{name: 1|0|-1}} (multi-label), got {labels!r}")
            for key, value in labels.items():
                if str(key) not in index:
                    raise _unknown_class(str(key), names, f"{where(it)}: labels key")
                out[row, index[str(key)]] = label_value(value, f"{where(it)}: labels[{key!r}]")
        return out
    out = np.empty(len(items), dtype=np.int64)
    for row, it in enumerate(items):
        out[row] = class_index(it.get("labels"), names, f"{where(it)}: labels")
    return out


def class_index(value: Any, names: Sequence[str], what: str) -> int:
    """A multi-class label: an index into ``names`` or one of the names."""
    if isinstance(value, str):
        if value in names:
            return list(names).index(value)
        raise _unknown_class(value, names, what)
    if value is None or isinstance(value, (Mapping, list, tuple)):
        raise LabelError(f"{what}: expected a class index or class name (multi-class), got {value!r}")
    index = _integer(value, what)
    if not 0 <= index < len(names):
        raise LabelError(f"{what}: class index {index} is outside 0..{len(names) - 1} (label_names {list(names)})")
    return index


def unnamed_index(value: Any, what: str) -> int:
    """A class index of a datalist without ``label_names`` (an integer >= 0)."""
    index = _integer(value, what)
    if index < 0:
        raise LabelError(f"{what}: a class index must be >= 0, got {value!r}")
    return index


def single_class(items: Sequence[Mapping[str, Any]], names: Sequence[str]) -> np.ndarray:
    """(N,) class index of each item, -1 where it is not single-class (no labels; dict labels with
    zero or several positives). Values are parsed as strictly as :func:`targets`."""
    out = np.full(len(items), -1, dtype=np.int64)
    index = {n: c for c, n in enumerate(names)}
    for row, it in enumerate(items):
        labels = it.get("labels")
        if labels is None:
            continue
        if isinstance(labels, Mapping):
            positive = []
            for key, value in labels.items():
                if str(key) not in index:
                    raise _unknown_class(str(key), list(names), f"{where(it)}: labels key")
                if label_value(value, f"{where(it)}: labels[{key!r}]") == 1:
                    positive.append(index[str(key)])
            if len(positive) == 1:
                out[row] = positive[0]
        else:
            out[row] = class_index(labels, names, f"{where(it)}: labels")
    return out


def stratified_subset(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, stratified ``fraction`` of the items.

    Strata: the class (multi-class, targets (N,)) or the label combination (multi-label, targets
    (N, C), -1 counted as a value of its own). The subset size ``round(fraction * N)`` (at least 1)
    is allocated to strata in proportion to their sizes by the largest-remainder method (ties
    broken at random), and each stratum contributes its first items in a seeded random order.
    Then every class that has a positive in the full set and none in the subset gets its first
    positive (in the same random order) added, so the subset may exceed ``round(fraction * N)``
    by at most C items. ``fraction`` >= 1 keeps everything.

    The same (targets, fraction, seed) always gives the same subset.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0 or math.isnan(fraction):
        raise ValueError(f"label_fraction: expected a number in (0, 1], got {fraction!r}")
    targets = np.asarray(targets)
    n = len(targets)
    if fraction >= 1.0 or n == 0:
        return np.arange(n)
    rng = np.random.default_rng(int(seed))
    keys = targets.reshape(n, -1)
    _, stratum = np.unique(keys, axis=0, return_inverse=True)
    stratum = stratum.ravel()
    sizes = np.bincount(stratum)
    want = max(1, int(round(fraction * n)))
    quota = fraction * sizes
    take = np.floor(quota).astype(np.int64)
    leftover = want - int(take.sum())
    by_remainder = np.lexsort((rng.random(len(sizes)), -(quota - take)))  # largest remainder first
    take[by_remainder[:leftover]] += 1
    priority = rng.random(n)  # a seeded random order of the items
    order = np.lexsort((priority, stratum))  # grouped by stratum, random within
    rank_in_stratum = np.empty(n, dtype=np.int64)
    rank_in_stratum[order] = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    chosen = rank_in_stratum < take[stratum]
    positives = targets == 1 if targets.ndim == 2 else targets.reshape(-1, 1) == np.arange(targets.max() + 1)
    for k in range(positives.shape[1]):  # coverage: at least one positive per class where there is one
        if positives[:, k].any() and not positives[chosen, k].any():
            candidates = np.flatnonzero(positives[:, k])
            chosen[candidates[np.argmin(priority[candidates])]] = True
    return np.flatnonzero(chosen)


def read_label_names(datalist: str) -> list[str] | None:
    """The datalist's top-level ``label_names`` (None when absent)."""
    from .textfiles import read_json

    content = read_json(datalist, "the datalist")
    names = content.get("label_names") if isinstance(content, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None
