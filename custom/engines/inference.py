"""Inference over many files where one bad file does not stop the rest.

:class:`TolerantItems` applies a bundle's ``preprocessing`` per item and turns a failure into a
record of what failed and why; :func:`collate_ok` keeps the items that worked. The predictors
write the rest and list the skipped files (with the reason) in their output JSON and the log.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..utils import as_optional_path

logger = logging.getLogger("reclf")


def reason(err: BaseException) -> str:
    """The innermost message of an error (MONAI wraps transform errors several times)."""
    inner = err
    while True:
        nxt = inner.__cause__ if inner.__cause__ is not None else (
            None if inner.__suppress_context__ else inner.__context__)
        if nxt is None:
            break
        inner = nxt
    return f"{type(inner).__name__}: {str(inner).strip().splitlines()[0] if str(inner).strip() else ''}".strip(": ")


class TolerantItems(torch.utils.data.Dataset):
    """``preprocessing(item)`` per item; a failing item becomes ``{"failed": path, "error": reason}``.

    Args:
        items: dicts with at least ``image`` (a path). preprocessing: the bundle's dict transform.
    """

    def __init__(self, items: Sequence[dict[str, Any]], preprocessing: Callable[[dict[str, Any]], dict[str, Any]]):
        self.items = list(items)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            return self.preprocessing(dict(item))
        except Exception as err:  # one unreadable file is reported, not fatal
            return {"failed": str(item["image"]), "error": reason(err), "index": item.get("index", index)}


def collate_ok(batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(items that were preprocessed, failures) of one loader batch."""
    ok = [b for b in batch if "failed" not in b]
    return ok, [{"image": b["failed"], "error": b["error"]} for b in batch if "failed" in b]


def tolerant_loader(items: Sequence[dict[str, Any]], preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
                    batch_size: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches of ``(preprocessed items, failures)`` in item order (:class:`TolerantItems`, :func:`collate_ok`)."""
    return torch.utils.data.DataLoader(TolerantItems(items, preprocessing), batch_size=int(batch_size), shuffle=False,
                                       num_workers=int(num_workers), collate_fn=collate_ok)


def input_items(input_files: Any, datalist: Any, dataset_dir: str | None, eval_split: str,
                what: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items a predictor runs on, and the ``source`` record of its output JSON: the expanded
    ``input_files`` if any, else the ``eval_split`` items of ``datalist`` (``what``: the verb of the
    error when there is neither, e.g. ``classify``)."""
    paths = expand_input_files(input_files)
    if paths:
        return [{"image": p} for p in paths], {"source": "input_files"}
    if as_optional_path(datalist) is None:
        raise ValueError(f"nothing to {what}: pass --input_files or a --datalist with an --eval_split")
    from ..data.datalist import load_datalist

    items = load_datalist(datalist, dataset_dir or "", eval_split)
    if not items:
        raise ValueError(f"datalist {datalist!r} has no items in split {eval_split!r}")
    return items, {"source": "datalist", "datalist": os.path.abspath(datalist), "eval_split": eval_split}


def report_skipped(skipped: list[dict[str, Any]], done: int, what: str) -> None:
    """Log the skipped files; raise when nothing at all could be processed."""
    if not skipped:
        return
    logger.warning("%s: %d file(s) skipped (unreadable), e.g. %s: %s", what, len(skipped), skipped[0]["image"],
                   skipped[0]["error"])
    if done == 0:
        raise ValueError(f"{what}: none of the {len(skipped)} input file(s) could be read, e.g. "
                         f"{skipped[0]['image']}: {skipped[0]['error']}")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz")


def expand_input_files(input_files: Any) -> list[str]:
    """A list of image paths from a path, a folder (its radiograph files, sorted) or a list of them.

    fire hands ``--input_files "['a.png','b.dcm']"`` over as a list and ``--input_files a.png`` as a
    string. Missing paths are an error naming them all.
    """
    if input_files is None or (isinstance(input_files, str) and as_optional_path(input_files) is None):
        return []
    entries = [input_files] if isinstance(input_files, (str, os.PathLike)) else list(input_files)
    paths: list[str] = []
    for entry in map(str, entries):
        if os.path.isdir(entry):
            found = sorted(p for p in glob.glob(os.path.join(entry, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise FileNotFoundError(f"input folder {entry!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        else:
            paths.append(entry)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} input file(s) not found: {missing[:5]}")
    return paths
