"""Reliability class 4: messages instead of tracebacks. Text files that are not UTF-8 name the
file and the encoding found; an empty split names the datalist and the split; the last line a
user sees is the project's message (docs/reliability.md, "Error messages")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY, exception_text, run_bundle

from custom.data import DatalistError, load_datalist
from custom.errors import project_error
from custom.textfiles import TextEncodingError, read_text

CXR_NOTES = os.path.join(REPO, "..", "shared", "data", "cxr-notes")
TRAIN_YAML = os.path.join(REPO, "bundles", "reclf_pretrain", "configs", "train.yaml")


def _reencoded_datalist(tiny_datalist: str, tmp_path, encoding: str) -> str:
    with open(tiny_datalist, encoding="utf-8") as f:
        content = json.load(f)
    content["training"][0]["report"] = "Kleiner Pleuraerguss rechts, Zustand nach Punktion – geringe Besserung."
    path = tmp_path / f"datalist_{encoding}.json"
    path.write_bytes(json.dumps(content, ensure_ascii=False).encode(encoding))
    return str(path)


@pytest.mark.parametrize(("encoding", "found"), [("cp1252", "Windows-1252"), ("utf-16", "UTF-16-LE")])
def test_datalist_not_utf8_names_file_and_encoding(encoding, found, tiny_datalist, tmp_path):
    path = _reencoded_datalist(tiny_datalist, tmp_path, encoding)
    with pytest.raises(DatalistError) as info:
        load_datalist(path, str(tmp_path), "training")
    message = str(info.value)
    assert path in message and "not UTF-8" in message and found in message and "iconv" in message, message


def test_datalist_utf8_with_bom_is_read(tiny_datalist, tmp_path):
    path = _reencoded_datalist(tiny_datalist, tmp_path, "utf-8-sig")
    assert len(load_datalist(path, str(tmp_path), "training")) == 64


def test_csv_not_utf8_names_file_and_encoding(tmp_path):
    """A preparer's metadata CSV re-saved by a spreadsheet as Windows-1252."""
    from custom.datasets import preparer
    from custom.datasets.common import PrepareError

    with open(os.path.join(CXR_NOTES, "metadata.csv"), encoding="utf-8") as f:
        lines = [next(f) for _ in range(6)]
    lines[3] = lines[3].replace("consolidation", "consolidación")
    root = tmp_path / "cxr"
    root.mkdir()
    (root / "metadata.csv").write_bytes("".join(lines).encode("cp1252"))
    with pytest.raises((PrepareError, TextEncodingError, ValueError)) as info:
        preparer("covid_notes")(root=str(root), out=str(tmp_path / "out"), quiet=True)
    message = exception_text(info.value)
    assert "metadata.csv" in message and "not UTF-8" in message and "Windows-1252" in message, message


def test_report_file_not_utf8_names_file_and_encoding(tmp_path):
    path = tmp_path / "s5000.txt"
    path.write_bytes("FINDINGS: Kein Pneumothorax. Herzgrösse normal.\n".encode("cp1252"))
    with pytest.raises(TextEncodingError) as info:
        read_text(str(path), "the report")
    assert str(path) in str(info.value) and "the report is not UTF-8" in str(info.value)


def test_prompt_file_not_utf8_names_file_and_encoding(tmp_path):
    from custom.prompts import PromptError, load_prompts

    path = tmp_path / "prompts.yaml"
    path.write_bytes("classes:\n  effusion: [pleural effusion – small]\n".encode("utf-16"))
    with pytest.raises(PromptError) as info:
        load_prompts(str(path))
    assert str(path) in str(info.value) and "UTF-16" in str(info.value)


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_empty_or_missing_validation_split_is_named(state, tiny_datalist, tmp_path):
    with open(tiny_datalist, encoding="utf-8") as f:
        content = json.load(f)
    if state == "empty":
        content["validation"] = []
    else:
        del content["validation"]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(Exception) as info:
        run_bundle("train.yaml", datalist=str(path), dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"),
                   epochs=1, **TINY)
    ours = project_error(info.value)
    assert isinstance(ours, DatalistError), exception_text(info.value)
    assert "the validation split is missing or empty" in str(ours) and str(path) in str(ours)
    assert not (tmp_path / "out" / "models" / "model.pt").exists()


def test_cli_bad_datalist_ends_with_the_project_message(tiny_datalist, tmp_path):
    """Through the real CLI: the line a user reads last is the project's message, not MONAI's."""
    env = dict(os.environ, PYTHONPATH=REPO)
    bad = _reencoded_datalist(tiny_datalist, tmp_path, "cp1252")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN_YAML, "--datalist", bad,
         "--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--epochs", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("reclf error:") and bad in lines[-1] and "Windows-1252" in lines[-1], proc.stderr[-3000:]
    # MONAI's wrapper ("Failed to evaluate ...") is above, never last
    assert "Failed to" not in lines[-1]
