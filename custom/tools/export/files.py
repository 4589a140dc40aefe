"""Files of an export: regular files only (links refused), exclusive temporary files, the
checkpoint sets, ``large_files.yml`` and the zip."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import yaml


# ---- files ---------------------------------------------------------------------------------------

def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path!r} is not valid JSON: {err}") from err


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class ExportLinkError(ValueError):
    """An export source is a symbolic link or not a regular file: exports copy regular files only."""


def _refuse_link(path: str) -> None:
    if os.path.islink(path):
        raise ExportLinkError(
            f"{path} is a symbolic link (to {os.readlink(path)!r}): exports copy regular files only, so that "
            "nothing outside the bundle's own folders ends up in it. Replace the link by the file itself, or remove it"
        )
    if os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
        raise ExportLinkError(f"{path} is not a regular file or folder (a device, socket or pipe): remove it")


def _copy_file(src: str, dst: str) -> None:
    """Copy one regular file (never through a link: opened with O_NOFOLLOW), keeping its times."""
    _refuse_link(src)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as source, open(dst, "xb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    shutil.copystat(src, dst, follow_symlinks=False)


def _copy_tree(src: str, dst: str, skip: Callable[[str, str], bool] = lambda folder, name: False) -> None:
    """Copy a folder of regular files and folders; any link inside is refused (:class:`ExportLinkError`),
    ``skip(folder, name)`` entries are left out."""
    _refuse_link(src)
    os.makedirs(dst, exist_ok=True)
    with os.scandir(src) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if skip(src, entry.name):
                continue
            if entry.is_symlink():
                _refuse_link(entry.path)
            if entry.is_dir(follow_symlinks=False):
                _copy_tree(entry.path, os.path.join(dst, entry.name), skip)
            else:
                _copy_file(entry.path, os.path.join(dst, entry.name))


def _copy_checkpoint(weights: str, dest_dir: str, need_text: bool) -> None:
    """``model.pt`` + its ``model.json`` (+ ``text/``) into ``dest_dir``; never ``train_state.pt``."""
    src_dir = os.path.dirname(os.path.abspath(weights))
    _copy_file(weights, os.path.join(dest_dir, "model.pt"))
    _copy_file(os.path.join(src_dir, "model.json"), os.path.join(dest_dir, "model.json"))
    if need_text:
        _copy_tree(os.path.join(src_dir, "text"), os.path.join(dest_dir, "text"))


def _check_checkpoint(weights: str, need_text: bool, what: str) -> None:
    src_dir = os.path.dirname(os.path.abspath(weights))
    missing = [n for n in ("model.json",) + (("text",) if need_text else ()) if not os.path.exists(os.path.join(src_dir, n))]
    if missing:
        raise FileNotFoundError(f"{what} {weights!r} is not self-describing: {missing} missing beside it "
                                "(train.yaml writes them next to model.pt)")
    from ...engines.checkpoints import read_meta

    for current, folders, files in os.walk(src_dir):  # links first: their message says what to fix
        for name in folders + files:
            _refuse_link(os.path.join(current, name))
    read_meta(weights)  # the parts must be one verified set before they are packaged


def _large_files(root: str) -> str:
    """``large_files.yml`` (model-zoo format) for the weight files under ``models/``."""
    entries = []
    for folder, dirs, files in os.walk(os.path.join(root, "models")):
        dirs.sort()
        for file in sorted(files):
            if file.endswith((".pt", ".ts", ".onnx")):
                path = os.path.join(folder, file)
                entries.append({"path": os.path.relpath(path, root).replace(os.sep, "/"), "url": "",
                                "hash_val": _sha256(path), "hash_type": "sha256"})
    header = ("# Weight files of this bundle (MONAI model-zoo large_files format). `url` is empty: these files\n"
              "# are local; fill in where they were uploaded before a model-zoo pull request (which leaves\n"
              "# files over 25 MB out). hash_val is the SHA-256 of the exported file.\n")
    return header + yaml.safe_dump({"large_files": entries}, sort_keys=False)


def _zip_folder(folder: str, zip_path: str) -> None:
    """``zip_path`` holding ``<folder name>/...``; weights stored as they are (they do not compress).

    Written to a temporary file created exclusively (``mkstemp``: a planted ``NAME.zip.tmp`` link
    cannot redirect it) in ``zip_path``'s folder, then renamed over ``zip_path`` (a link there is
    replaced, never followed). Links inside ``folder`` are refused.
    """
    base = os.path.dirname(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(zip_path)}.", suffix=".tmp", dir=os.path.dirname(zip_path))
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            for current, dirs, files in os.walk(folder):
                dirs.sort()
                for name in dirs + files:
                    _refuse_link(os.path.join(current, name))
                for file in sorted(files):
                    path = os.path.join(current, file)
                    stored = file.endswith((".pt", ".ts", ".onnx", ".zip"))
                    archive.write(path, os.path.relpath(path, base),
                                  compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
        os.replace(tmp, zip_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
