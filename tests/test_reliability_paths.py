"""Reliability class 5: nothing is written outside where it was asked, nothing outside the
bundle is copied into it, and pickles are unpickled by a restricted unpickler only."""

from __future__ import annotations

import os
import shutil
import zipfile

import pytest
import torch


@pytest.fixture()
def checkpoint_copy(pretrained, tmp_path) -> str:
    """A copy of the shared pretraining checkpoint (model.pt, model.json, text/) to tamper with."""
    folder = tmp_path / "ckpt"
    shutil.copytree(os.path.join(pretrained, "models"), folder, ignore=shutil.ignore_patterns("train_state.pt"))
    return str(folder / "model.pt")


def test_export_refuses_a_link_inside_the_checkpoint(checkpoint_copy, tmp_path):
    from custom.export import ExportLinkError, export_bundle

    secret = tmp_path / "restricted" / "patients.csv"
    secret.parent.mkdir()
    secret.write_text("patient_id,name\n1,Jane Doe\n")
    os.symlink(secret, os.path.join(os.path.dirname(checkpoint_copy), "text", "notes.csv"))
    out = tmp_path / "exports"
    with pytest.raises(ExportLinkError, match=r"notes.csv is a symbolic link .*regular files only"):
        export_bundle("reclf_pretrain", str(out), weights=checkpoint_copy)
    # nothing half-written: no bundle, no zip, no staging folder left behind
    assert not out.exists() or not [n for n in os.listdir(out)]
    # the weights file itself as a link is refused too
    real = tmp_path / "elsewhere.pt"
    os.remove(os.path.join(os.path.dirname(checkpoint_copy), "text", "notes.csv"))
    shutil.move(checkpoint_copy, real)
    os.symlink(real, checkpoint_copy)
    with pytest.raises(ExportLinkError, match="model.pt is a symbolic link"):
        export_bundle("reclf_pretrain", str(out), weights=checkpoint_copy)


def test_export_ignores_a_planted_temp_link_and_refuses_a_linked_destination(checkpoint_copy, tmp_path):
    from custom.export import ExportLinkError, export_bundle

    out = tmp_path / "exports"
    out.mkdir()
    victim = tmp_path / "outside.txt"
    victim.write_text("must stay as it is")
    os.symlink(victim, out / "reclf_pretrain.zip.tmp")  # what the old exporter wrote through
    folder = export_bundle("reclf_pretrain", str(out), weights=checkpoint_copy)
    assert victim.read_text() == "must stay as it is"
    with zipfile.ZipFile(folder + ".zip") as archive:
        assert "reclf_pretrain/models/model.pt" in archive.namelist()
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") and not os.path.islink(out / n)]
    # a link where the zip goes is refused, not followed
    os.remove(folder + ".zip")
    os.symlink(victim, folder + ".zip")
    with pytest.raises(ExportLinkError, match=r"reclf_pretrain.zip is a symbolic link"):
        export_bundle("reclf_pretrain", str(out), weights=checkpoint_copy, overwrite=True)
    assert victim.read_text() == "must stay as it is"


class _RunsACommand:
    """A pickle payload: unpickling it calls os.system (what a malicious checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_trusted_pickles_go_through_a_restricted_unpickler(tmp_path):
    from custom.convert import CheckpointConversionError, read_lightning_state_dict

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": _RunsACommand(str(marker))}, path)
    with pytest.raises(CheckpointConversionError, match=r"os.system|posix.system"):
        read_lightning_state_dict(str(path), trust_pickle=True)
    assert not marker.exists()
    # builtins beyond containers (eval, getattr, __import__) are refused the same way
    evil2 = tmp_path / "evil2.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": _Eval()}, evil2)
    with pytest.raises(CheckpointConversionError, match="builtins.eval"):
        read_lightning_state_dict(str(evil2), trust_pickle=True)


class _Eval:
    def __reduce__(self):
        return eval, ("1 + 1",)
