"""Reliability class 2: a run that would do nothing, or that was given a key no config item
reads, fails with the key named (and the nearest known key), before anything is written
(docs/reliability.md, "Configuration")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY, exception_text, run_bundle

BUNDLES = os.path.join(REPO, "bundles")
ALL_CONFIGS = sorted(
    os.path.join(BUNDLES, bundle, "configs", name)
    for bundle in ("reclf_pretrain", "reclf_cls", "reclf_seg")
    for name in os.listdir(os.path.join(BUNDLES, bundle, "configs"))
    if name.endswith(".yaml") and name != "multi_gpu_train.yaml"
)


def _config_error(config, **overrides) -> str:
    with pytest.raises(Exception) as info:
        run_bundle(config, **overrides)
    return exception_text(info.value)


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: os.path.relpath(p, BUNDLES))
def test_unknown_key_is_refused_in_every_config(config, tmp_path):
    """A typo of a real key fails before any component is built, naming the nearest key."""
    text = _config_error(config, output_dir=str(tmp_path / "out"), bundle_rooot="x")
    assert "bundle_rooot" in text and "did you mean 'bundle_root'" in text, text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("typo", "meant"), [("epoch", "epochs"), ("batchsize", "batch_size"), ("learning_rate", "lr")])
def test_typos_of_training_keys_name_the_key_meant(typo, meant, tiny_datalist, tmp_path):
    out = tmp_path / "out"
    text = _config_error("train.yaml", dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist,
                         output_dir=str(out), **TINY, **{typo: 3})
    assert f"'{typo}'" in text and f"did you mean '{meant}'" in text, text
    assert not out.exists(), "nothing may be written by a refused run"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epochs", 0, "epochs: expected an integer >= 1, got 0"),
        ("epochs", -1, "epochs: expected an integer >= 1, got -1"),
        ("epochs", "abc", "epochs: expected an integer, got 'abc'"),
        ("epochs", 2.5, "epochs: expected an integer, got 2.5"),
        ("batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
        ("grad_accumulation", 0, "grad_accumulation: expected an integer >= 1, got 0"),
        ("image_size", -64, "image_size: expected an integer >= 8, got -64"),
        ("num_workers", -1, "num_workers: expected an integer >= 0, got -1"),
        ("max_length", 0, "max_length: expected at least 3 tokens ([CLS] word [SEP]), got 0"),
    ],
)
def test_pretraining_refuses_sizes_that_train_nothing(key, value, expected, tiny_datalist, tmp_path):
    """`--epochs 0` used to exit 0 and write no model; now every size is checked up front."""
    out = tmp_path / "out"
    overrides = dict(dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist, output_dir=str(out), **TINY)
    overrides[key] = value
    text = _config_error("train.yaml", **overrides)
    assert expected in text, text
    assert not os.path.exists(os.path.join(out, "models", "model.pt"))


def test_downstream_epochs_are_checked(pretrained, tmp_path):
    text = _config_error(
        os.path.join(BUNDLES, "reclf_cls", "configs", "train.yaml"), pretrained_ckpt=os.path.join(pretrained, "models", "model.pt"),
        output_dir=str(tmp_path / "cls"), epochs=0, device="cpu",
    )
    assert "epochs: expected an integer >= 1, got 0" in text, text


def test_cli_unknown_key_exits_nonzero_with_the_message_last(tmp_path):
    """What a user sees in a terminal: a non-zero exit and the project's line at the very end."""
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         os.path.join(BUNDLES, "reclf_pretrain", "configs", "train.yaml"),
         "--output_dir", str(tmp_path / "out"), "--epoch", "3", "--batchsize", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("reclf error:"), proc.stderr[-2000:]
    assert "'epoch'" in last and "did you mean 'epochs'" in last and "'batchsize'" in last, last
    assert not (tmp_path / "out").exists()
