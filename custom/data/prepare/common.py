"""What every ``prepare`` shares: candidate records, the bad-input policy, patient-grouped seeded
splits, identical-image merging, the printed summary and the datalist writer (DESIGN §4).

A dataset module turns its native layout into :class:`Record` objects (one per image, with the
official split where the dataset ships one) and hands them to :func:`finalize`, which

1. checks that every image exists (and, with ``verify``, decodes it),
2. merges items whose image bytes are identical and joins their patients into one split group,
3. keeps official splits and splits only the open groups, by group, seeded,
4. writes the datalist atomically and prints a summary (counts, label balance, rows dropped and why).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...utils import as_bool, as_choice, atomic_write_text

SPLITS = ("training", "validation", "test")
# a group whose patients carry several official splits goes to the most protected one
_PROTECTION = {"test": 2, "validation": 1, "training": 0}


class PrepareError(ValueError):
    """The dataset on disk does not match the expected layout; the message names file, row and fix."""


@dataclass
class Record:
    """One candidate datalist item, before checks and splitting.

    Attributes:
        image: path relative to the dataset root, or absolute (generated files).
        patient_id: the split unit; identical images join their patients into one group.
        source: where the row came from, for messages (``"train.csv:17"``).
        report, labels, mask, view: datalist fields (absent when None).
        split: the dataset's official split (``training``/``validation``/``test``), or None (open).
        extra: further datalist fields (e.g. ``study_id``).
    """

    image: str
    patient_id: str
    source: str
    report: str | None = None
    labels: dict[str, int] | int | None = None
    mask: str | None = None
    view: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PrepareLog:
    """Counts rows dropped (by reason) and applies the bad-input policy.

    ``drop`` is for rows a dataset's own rules exclude (a lateral view, an empty report): always
    counted, never an error. ``bad`` is for broken input (a missing file, a malformed row): an
    error naming the row under ``on_error="error"``, counted under ``on_error="skip"``.
    """

    def __init__(self, dataset: str, on_error: str = "error") -> None:
        self.dataset = dataset
        self.on_error = as_choice(on_error, ("error", "skip"), "on_error")
        self.dropped: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.notes: list[str] = []

    def drop(self, reason: str, source: str = "") -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, source)

    def flag(self, reason: str, source: str = "") -> None:
        """A row that is kept but incomplete (no report, no class label): counted in the summary."""
        self.flagged[reason] += 1
        self.examples.setdefault(reason, source)

    def bad(self, reason: str, source: str, detail: str = "") -> None:
        if self.on_error == "error":
            message = f"{source}: {reason}" + (f" ({detail})" if detail else "")
            raise PrepareError(f"{message}. Fix the input, or pass --on_error skip to skip and count such rows")
        self.skipped[reason] += 1
        self.examples.setdefault(reason, source)

    def note(self, text: str) -> None:
        self.notes.append(text)


# --------------------------------------------------------------------------------------------
# Reading native files
# --------------------------------------------------------------------------------------------


def open_text(path: str) -> io.TextIOBase:
    """Open a UTF-8 text file, transparently gunzipping ``*.gz``; another encoding is a
    :class:`~custom.textfiles.TextEncodingError` naming the file and the encoding it looks like."""
    from ..textfiles import open_text as open_utf8

    try:
        return open_utf8(path, "the table")
    except ValueError as err:
        raise PrepareError(str(err)) from None


def find_file(root: str, names: Sequence[str], what: str, layout: str = "") -> str:
    """The first of ``names`` (relative to ``root``) that exists, else a :class:`PrepareError`."""
    for name in names:
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    hint = f"\nExpected layout:\n{layout}" if layout else ""
    raise PrepareError(f"{root}: {what} not found (looked for {', '.join(names)}){hint}")


def read_csv(
    path: str, required: Sequence[str], log: PrepareLog | None = None
) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a CSV (or ``.csv.gz``) as ``("file.csv:LINE", row)``, header names stripped of
    spaces (SIIM's ``train-rle.csv`` has the header ``ImageId, EncodedPixels``).

    A missing column is always an error (the whole file is the wrong one). A malformed row goes
    through ``log.bad`` (an error naming file:line, or counted under ``on_error="skip"``), or
    raises when no ``log`` is given. Nameless trailing columns are tolerated: NIH's
    ``Data_Entry_2017.csv`` header ends with a comma that some of its rows lack. LINE is the
    physical line where the row starts (quoted cells may span lines).
    """
    name = os.path.basename(path)
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise PrepareError(f"{path}: empty file (expected a header with {list(required)})") from None
        while header and header[-1] == "":
            header.pop()
        missing = [c for c in required if c not in header]
        if missing:
            raise PrepareError(f"{path}: missing column(s) {missing}; found {header}")
        width = len(header)
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise PrepareError(f"{name}:{start}: unreadable csv row ({err})") from None
            source, start = f"{name}:{start}", reader.line_num + 1
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) < width or any(v.strip() for v in values[width:]):
                reason = f"{len(values)} fields, the header has {width} (malformed row)"
                if log is None:
                    raise PrepareError(f"{source}: {reason}")
                log.bad(reason, source)
                continue
            yield source, {h: v.strip() for h, v in zip(header, values)}


def index_files(root: str, suffixes: Sequence[str]) -> dict[str, str]:
    """Map file stem → path relative to ``root`` for files under ``root`` ending in ``suffixes``."""
    found: dict[str, str] = {}
    suffixes = tuple(s.lower() for s in suffixes)
    for folder, _, files in os.walk(root):
        for name in files:
            lower = name.lower()
            for suffix in suffixes:
                if lower.endswith(suffix):
                    found.setdefault(name[: -len(suffix)], os.path.relpath(os.path.join(folder, name), root))
                    break
    return found


def frontal_filter(views: Any) -> Callable[[str | None], bool]:
    """``"frontal"`` keeps PA/AP views and images whose view is not recorded; ``"all"`` keeps
    all; a list keeps exactly those view names (case-insensitive)."""
    if isinstance(views, (list, tuple)):
        wanted = {str(v).strip().upper() for v in views}
        return lambda view: (view or "").strip().upper() in wanted
    choice = as_choice(views, ("frontal", "all"), "views")
    if choice == "all":
        return lambda view: True

    def frontal(view: str | None) -> bool:
        text = (view or "").strip().upper()
        return text in ("", "?", "UNKNOWN") or text.startswith(("PA", "AP", "FRONTAL", "POSTEROANTERIOR", "ANTERO"))

    return frontal


def uncertain_value(value: str, policy: str, source: str, column: str) -> int | None:
    """A CheXpert-style label cell → 1/0/-1 (blank = not mentioned = 0); uncertain (-1) kept as
    -1 (``ignore``: losses and metrics mask it), or mapped to 1 (``ones``) or 0 (``zeros``)."""
    text = value.strip()
    if text == "":
        return 0
    try:
        number = int(float(text))
    except ValueError:
        raise PrepareError(f"{source}: column {column!r} has {value!r}; expected 1, 0, -1 or blank") from None
    if number not in (1, 0, -1):
        raise PrepareError(f"{source}: column {column!r} has {value!r}; expected 1, 0, -1 or blank")
    if number == -1:
        return {"ignore": -1, "ones": 1, "zeros": 0}[policy]
    return number


# --------------------------------------------------------------------------------------------
# Checks, identical images, splits
# --------------------------------------------------------------------------------------------


def _absolute(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


def _digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def merge_identical_images(records: list[Record], root: str, log: PrepareLog) -> tuple[list[Record], list[set[str]]]:
    """Keep the first of items whose image bytes are identical; return the kept records and the
    patient sets that shared an image (they must land in one split). Only files whose sizes
    collide are hashed, so large datasets cost one ``stat`` per image."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for n, record in enumerate(records):
        by_size[os.path.getsize(_absolute(root, record.image))].append(n)
    first_of: dict[str, int] = {}
    duplicate_of: dict[int, int] = {}
    for indices in by_size.values():
        if len(indices) < 2:
            continue
        for n in indices:
            key = _digest(_absolute(root, records[n].image))
            if key in first_of:
                duplicate_of[n] = first_of[key]
            else:
                first_of[key] = n
    linked: list[set[str]] = []
    for n, keep in duplicate_of.items():
        linked.append({records[n].patient_id, records[keep].patient_id})
        log.drop("identical image bytes as an earlier item (merged)", records[n].source)
    return [r for n, r in enumerate(records) if n not in duplicate_of], linked


def patient_groups(records: Sequence[Record], linked: Iterable[set[str]]) -> dict[str, str]:
    """Union-find over patients: patient id → group id (patients that shared an image are one)."""
    parent: dict[str, str] = {r.patient_id: r.patient_id for r in records}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for patients in linked:
        first, *rest = sorted(patients)
        for other in rest:
            a, b = find(first), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {p: find(p) for p in parent}


def assign_splits(
    records: Sequence[Record],
    groups: dict[str, str],
    seed: int,
    val_frac: float,
    test_frac: float,
    open_splits: Sequence[str] = SPLITS,
) -> list[str]:
    """Split label for each record, by patient group.

    Groups that contain an official split keep it (the most protected one if they mix). The open
    groups are shuffled with ``seed`` and filled into ``test`` then ``validation`` until each
    holds its fraction of the open items; the rest is ``training``. A split not in
    ``open_splits`` (e.g. ``test`` when the dataset ships its own test set) is not filled.
    """
    official: dict[str, str] = {}
    size: Counter[str] = Counter()
    for r in records:
        g = groups[r.patient_id]
        size[g] += 1
        if r.split is not None:
            if r.split not in SPLITS:
                raise ValueError(f"{r.source}: unknown official split {r.split!r}")
            if g not in official or _PROTECTION[r.split] > _PROTECTION[official[g]]:
                official[g] = r.split
    # stratify by class (integer labels): the groups of each class are split separately, so a
    # small dataset does not end up with a class missing from validation or test
    votes: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        votes[groups[r.patient_id]][r.labels if isinstance(r.labels, int) else -1] += 1
    strata: dict[Any, list[str]] = defaultdict(list)
    for g in sorted(g for g in size if g not in official):
        strata[max(votes[g].items(), key=lambda kv: (kv[1], -kv[0]))[0]].append(g)
    rng = np.random.default_rng(int(seed))
    targets = [(s, f) for s, f in (("test", test_frac), ("validation", val_frac)) if s in open_splits and f > 0]
    rest = "training" if "training" in open_splits else (open_splits[0] if open_splits else None)
    chosen: dict[str, str] = {}
    for stratum in sorted(strata):
        members = strata[stratum]
        order = [members[i] for i in rng.permutation(len(members))]
        n_open = sum(size[g] for g in members)
        position = 0
        for split, fraction in targets:
            want, taken = fraction * n_open, 0
            while position < len(order) and taken < want:
                # stop before a group that overshoots by more than it undershoots
                g = order[position]
                if taken > 0 and taken + size[g] - want > want - taken:
                    break
                chosen[g] = split
                taken += size[g]
                position += 1
        for g in order[position:]:
            if rest is None:
                raise ValueError(f"patient group {g} has no official split and no split is open")
            chosen[g] = rest
    chosen.update(official)
    return [chosen[groups[r.patient_id]] for r in records]


# --------------------------------------------------------------------------------------------
# Summary and writing
# --------------------------------------------------------------------------------------------


def label_balance(items: Sequence[dict[str, Any]], label_names: Sequence[str] | None) -> dict[str, Any]:
    """Positive / negative / uncertain counts per class (dict labels) or items per class (int labels)."""
    labelled = [it["labels"] for it in items if "labels" in it]
    if not labelled:
        return {}
    if isinstance(labelled[0], dict):
        names = sorted({k for lab in labelled for k in lab}, key=lambda k: (label_names or []).index(k)
                       if label_names and k in label_names else len(label_names or []))
        return {k: {"pos": sum(lab.get(k) == 1 for lab in labelled), "neg": sum(lab.get(k) == 0 for lab in labelled),
                    "uncertain": sum(lab.get(k) == -1 for lab in labelled)} for k in names}
    counts = Counter(int(lab) for lab in labelled)
    return {(label_names[c] if label_names and 0 <= c < len(label_names) else str(c)): counts[c] for c in sorted(counts)}


def summarize(datalist: dict[str, Any], log: PrepareLog, label_names: Sequence[str] | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"splits": {}}
    for split in SPLITS:
        items = datalist[split]
        summary["splits"][split] = {
            "items": len(items),
            "patients": len({it["patient_id"] for it in items}),
            "with_report": sum(bool(it.get("report")) for it in items),
            "with_mask": sum(bool(it.get("mask")) for it in items),
            "with_labels": sum("labels" in it for it in items),
            "labels": label_balance(items, label_names),
        }
    summary["dropped"] = dict(log.dropped)
    summary["skipped_bad_input"] = dict(log.skipped)
    summary["kept_incomplete"] = dict(log.flagged)
    summary["examples"] = dict(log.examples)
    summary["notes"] = list(log.notes)
    return summary


def format_summary(dataset: str, out: str, root: str, summary: dict[str, Any]) -> str:
    lines = [f"prepare {dataset}: wrote {out}"]
    for split, s in summary["splits"].items():
        lines.append(
            f"  {split:<10} {s['items']:>7} items  {s['patients']:>6} patients  reports {s['with_report']}"
            f"  masks {s['with_mask']}  labelled {s['with_labels']}"
        )
        for name, value in s["labels"].items():
            text = value if isinstance(value, int) else ", ".join(f"{k} {v}" for k, v in value.items())
            lines.append(f"      {name}: {text}")
    for title, counts in (
        ("dropped", summary["dropped"]),
        ("skipped (bad input, --on_error skip)", summary["skipped_bad_input"]),
        ("kept, incomplete", summary["kept_incomplete"]),
    ):
        if counts:
            lines.append(f"  {title}:")
            for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                lines.append(f"      {n:>6}  {reason}   (e.g. {summary['examples'].get(reason, '')})")
    lines.extend(f"  note: {text}" for text in summary["notes"])
    lines.append(f"  use with: --dataset_dir {root} --datalist {out}")
    return "\n".join(lines)


def relative_to_root(path: str, root: str) -> str:
    """Paths under ``root`` are written relative to it (the datalist moves with the data); others absolute."""
    absolute = os.path.abspath(_absolute(root, path))
    rel = os.path.relpath(absolute, os.path.abspath(root))
    return absolute if rel.startswith("..") else rel.replace(os.sep, "/")


def finalize(
    dataset: str,
    records: list[Record],
    *,
    root: str,
    out: str,
    log: PrepareLog,
    seed: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    open_splits: Sequence[str] = SPLITS,
    label_names: Sequence[str] | None = None,
    dedup: Any = True,
    verify: Any = False,
    options: dict[str, Any] | None = None,
    quiet: bool = False,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check, merge, split, write ``out`` and print the summary; return the datalist.

    Args:
        records: candidates from a dataset module (paths relative to ``root`` or absolute).
        open_splits: the splits the open (non-official) groups may be assigned to.
        dedup: merge items with identical image bytes (their patients become one split group).
        verify: decode every image once (catches truncated/corrupt files before training).
        options: the command's options, recorded in the datalist for provenance.
        meta: further top-level datalist keys (e.g. a description).
    """
    from ..io import RadiographReadError, read_radiograph

    for name, fraction in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= float(fraction) < 1.0:
            raise ValueError(f"{name}: expected a fraction in [0, 1), got {fraction!r}")
    if float(val_frac) + float(test_frac) >= 1.0:
        raise ValueError(f"val_frac + test_frac must be < 1, got {val_frac} + {test_frac}")
    root = os.path.abspath(os.path.expanduser(str(root)))
    checked: list[Record] = []
    for record in records:
        for what in ("image", "mask"):
            path = getattr(record, what)
            if path and not os.path.isfile(_absolute(root, path)):
                log.bad(f"{what} file not found", record.source, _absolute(root, path))
                break
        else:
            if as_bool(verify, "verify"):
                try:
                    read_radiograph(_absolute(root, record.image))
                except RadiographReadError as err:
                    log.bad("image cannot be read", record.source, str(err))
                    continue
            checked.append(record)
    linked: list[set[str]] = []
    if as_bool(dedup, "dedup"):
        checked, linked = merge_identical_images(checked, root, log)
    if not checked:
        raise PrepareError(f"prepare {dataset}: no usable items under {root} (dropped: {dict(log.dropped)}, "
                           f"skipped: {dict(log.skipped)})")
    groups = patient_groups(checked, linked)
    if len(set(groups.values())) < len({r.patient_id for r in checked}):
        log.note(f"{len({r.patient_id for r in checked}) - len(set(groups.values()))} patient id(s) joined "
                 "to another patient's split group because they share an identical image")
    splits = assign_splits(checked, groups, seed, float(val_frac), float(test_frac), open_splits)
    datalist: dict[str, Any] = {s: [] for s in SPLITS}
    for record, split in zip(checked, splits):
        item: dict[str, Any] = {"image": relative_to_root(record.image, root), "patient_id": str(record.patient_id)}
        if record.report is not None:
            item["report"] = record.report
        if record.labels is not None:
            item["labels"] = record.labels
        if record.mask is not None:
            item["mask"] = relative_to_root(record.mask, root)
        if record.view is not None:
            item["view"] = record.view
        item.update(record.extra)
        datalist[split].append(item)
    _check_patient_disjoint(datalist, groups)
    if label_names is not None:
        datalist["label_names"] = list(label_names)
    datalist.update(meta or {})
    summary = summarize(datalist, log, label_names)
    datalist["prepare"] = {
        "dataset": dataset, "root": root, "seed": int(seed), "val_frac": float(val_frac),
        "test_frac": float(test_frac), "options": options or {}, "summary": summary,
    }
    out = os.path.abspath(os.path.expanduser(str(out)))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    atomic_write_text(json.dumps(datalist, indent=1), out)
    if not as_bool(quiet, "quiet"):
        print(format_summary(dataset, out, root, summary), flush=True)
    return datalist


def _check_patient_disjoint(datalist: dict[str, Any], groups: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        for item in datalist[split]:
            g = groups[item["patient_id"]]
            if seen.setdefault(g, split) != split:  # a bug here would leak patients between splits
                raise AssertionError(f"patient group {g} is in both {seen[g]} and {split}")


def mask_dir_for(out: str, mask_dir: Any, dataset: str) -> str:
    """Where generated masks go: ``--mask_dir``, else ``<out folder>/<dataset>_masks`` (never the
    dataset root, which may be read-only)."""
    from ...utils import as_optional_path

    chosen = as_optional_path(mask_dir)
    folder = chosen or os.path.join(os.path.dirname(os.path.abspath(str(out))), f"{dataset}_masks")
    os.makedirs(folder, exist_ok=True)
    return os.path.abspath(folder)


def write_mask_png(mask: np.ndarray, path: str) -> None:
    """Write a (H, W) boolean mask as a 0/255 PNG, atomically (``array[row, col]`` as displayed)."""
    from PIL import Image

    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


class MaskWriter:
    """Writes 0/255 PNG masks; empty masks (most of the images) are encoded once per size."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._empty: dict[tuple[int, int], bytes] = {}

    def write(self, mask: np.ndarray, name: str) -> str:
        path = os.path.join(self.folder, name)
        if mask.any():
            write_mask_png(mask, path)
            return path
        shape = mask.shape
        if shape not in self._empty:
            write_mask_png(mask, path)
            with open(path, "rb") as f:
                self._empty[shape] = f.read()
            return path
        tmp = f"{path}.tmp{os.getpid()}.png"
        with open(tmp, "wb") as f:
            f.write(self._empty[shape])
        os.replace(tmp, path)
        return path


def common_options(seed: int, val_frac: float, test_frac: float, on_error: str, **more: Any) -> dict[str, Any]:
    """The options recorded in the datalist's ``prepare`` block."""
    return {"seed": seed, "val_frac": val_frac, "test_frac": test_frac, "on_error": on_error, **more}
