"""COVIDx CXR (COVID-Net, lindawangg/COVID-Net): chest X-rays with a COVID-19 class per image,
listed in plain-text split files."""

from __future__ import annotations

import glob
import os
from collections import Counter
from typing import Any

from ...utils import as_bool
from .common import PrepareError, PrepareLog, Record, common_options, finalize, open_text

# the two label vocabularies COVIDx has shipped, each in its fixed int order
THREE_CLASS: tuple[str, ...] = ("normal", "pneumonia", "COVID-19")  # COVIDx v1 .. v8A
BINARY: tuple[str, ...] = ("negative", "positive")  # COVIDx v7B, v8B, CXR-2, CXR-3, CXR-4
# label text (lower case) → canonical spelling
_CANONICAL = {name.lower(): name for name in THREE_CLASS + BINARY}
_SPLIT_OF = {"train": None, "val": "validation", "test": "test"}

LAYOUT = """\
ROOT/
  train.txt     one image per line: patient_id filename label source
  val.txt       (CXR-3 and later) same format
  test.txt      same format
                (older releases: train_COVIDx8A.txt / test_COVIDx8A.txt, lines `patient_id filename label`)
                label: negative | positive   (older: normal | pneumonia | COVID-19)
  train/<filename>   images of train.txt
  val/<filename>     images of val.txt
  test/<filename>    images of test.txt"""


def _split_file(root: str, split: str, required: bool) -> str | None:
    """``ROOT/<split>.txt``, else the one ``ROOT/<split>_COVIDx*.txt`` of older releases."""
    plain = os.path.join(root, f"{split}.txt")
    if os.path.isfile(plain):
        return plain
    versioned = sorted(glob.glob(os.path.join(glob.escape(root), f"{split}_COVIDx*.txt")))
    if len(versioned) == 1:
        return versioned[0]
    if len(versioned) > 1:
        names = ", ".join(os.path.basename(p) for p in versioned)
        raise PrepareError(f"{root}: several {split} lists ({names}); keep one release's files in ROOT")
    if required:
        raise PrepareError(f"{root}: {split}.txt not found (nor {split}_COVIDx*.txt)\nExpected layout:\n{LAYOUT}")
    return None


def parse_line(tokens: list[str]) -> tuple[str, str, str, str | None] | None:
    """``(patient_id, filename, label, source)`` from a whitespace-split line, or None when no
    known label sits where the format puts it.

    Lines are ``patient_id filename label [source]``. The label is found from the end (the
    4-field format when the second-last token is a label, else the 3-field format), so a file
    name that contains spaces is joined back together.
    """
    if len(tokens) >= 4 and tokens[-2].lower() in _CANONICAL:
        return tokens[0], " ".join(tokens[1:-2]), _CANONICAL[tokens[-2].lower()], tokens[-1]
    if tokens[-1].lower() in _CANONICAL:
        return tokens[0], " ".join(tokens[1:-1]), _CANONICAL[tokens[-1].lower()], None
    return None


def prepare_covidx(
    root: str,
    out: str,
    seed: int = 0,
    val_frac: float = 0.1,
    on_error: str = "error",
    dedup: bool = True,
    verify: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Datalist from COVIDx CXR: int labels with top-level ``label_names``, ``negative`` /
    ``positive`` (CXR-2 and later) or ``normal`` / ``pneumonia`` / ``COVID-19`` (older releases).

    Expected layout::

        ROOT/
          train.txt     one image per line: patient_id filename label source
          val.txt       (CXR-3 and later) same format
          test.txt      same format
                        (older releases: train_COVIDx8A.txt / test_COVIDx8A.txt, lines `patient_id filename label`)
                        label: negative | positive   (older: normal | pneumonia | COVID-19)
          train/<filename>   images of train.txt
          val/<filename>     images of val.txt
          test/<filename>    images of test.txt

    Splits: test.txt is the test split and val.txt (when present) the validation split, as
    published; without val.txt, validation is carved from the train.txt patients (``val_frac``).

    Patients: COVIDx pools several public collections, each numbering its own patients (the
    same ``patient_id`` can be two people from two sources), so the split unit is
    ``source:patient_id`` when lines carry a source, and ``patient_id`` otherwise. A patient
    listed in two split files is kept together in the most protected one (test, then
    validation); a note counts them. Identical images from two sources are merged (``dedup``).
    All lines must use one label vocabulary.

    Args:
        root: the dataset folder (see above). out: datalist JSON to write.
        seed, val_frac: patient-grouped seeded split of train.txt (used without val.txt).
        on_error: ``error`` (stop at the first bad line, naming it) or ``skip`` (count it).
        dedup: merge identical images. verify: decode every image once.
    """
    log = PrepareLog("covidx", on_error)
    root = os.path.abspath(os.path.expanduser(str(root)))
    lists = {split: _split_file(root, split, required=split != "val") for split in ("train", "val", "test")}
    records: list[Record] = []
    seen: dict[str, str] = {}
    for split, path in lists.items():
        if path is None:
            continue
        name = os.path.basename(path)
        with open_text(path) as f:
            for line_number, line in enumerate(f, start=1):
                tokens = line.split()
                if not tokens:
                    continue
                source = f"{name}:{line_number}"
                if len(tokens) < 3:
                    log.bad(f"{len(tokens)} field(s); expected 'patient_id filename label [source]'", source)
                    continue
                parsed = parse_line(tokens)
                if parsed is None:
                    label = tokens[2] if len(tokens) in (3, 4) else tokens[-2]
                    log.bad(f"unknown label {label!r}", source,
                            f"expected one of {list(THREE_CLASS)} or {list(BINARY)}")
                    continue
                patient, filename, label, origin = parsed
                image = f"{split}/{filename}"
                if image in seen:
                    log.drop("image listed twice (first line kept)", source)
                    continue
                seen[image] = source
                records.append(Record(
                    image=image, patient_id=f"{origin}:{patient}" if origin else patient, source=source,
                    labels=label, split=_SPLIT_OF[split], extra={"data_source": origin} if origin else {},
                ))
    vocabulary = {r.labels for r in records}
    if vocabulary <= set(BINARY):
        label_names = BINARY
    elif vocabulary <= set(THREE_CLASS):
        label_names = THREE_CLASS
    else:
        first = {v: next(r.source for r in records if r.labels == v) for v in sorted(vocabulary)}
        raise PrepareError(f"{root}: the split files mix label vocabularies ({first}); "
                           f"expected only {list(BINARY)} or only {list(THREE_CLASS)}")
    for record in records:
        record.labels = label_names.index(record.labels)
    splits_of: dict[str, set[str]] = {}
    for record in records:
        splits_of.setdefault(record.patient_id, set()).add(record.split or "train")
    crossing = sum(len(s) > 1 for s in splits_of.values())
    if crossing:
        log.note(f"{crossing} patient(s) listed in two split files: all their images go to the most "
                 "protected of those splits (test, then validation)")
    official_val = lists["val"] is not None
    if official_val:
        log.note(f"{os.path.basename(lists['val'])} is the validation split; val_frac unused")
        for record in records:
            if record.split is None:
                record.split = "training"
    counts = Counter(r.labels for r in records)
    missing = [label_names[c] for c in range(len(label_names)) if not counts[c]]
    if missing:
        log.note(f"no image of class {missing}")
    fill_val = 0.0 if official_val else float(val_frac)
    return finalize(
        "covidx", records, root=root, out=out, log=log, seed=seed, val_frac=fill_val, test_frac=0.0,
        open_splits=("training", "validation"), label_names=label_names, dedup=dedup, verify=verify,
        quiet=as_bool(quiet, "quiet"),
        options=common_options(seed, fill_val, 0.0, on_error, dedup=dedup, verify=verify),
    )
