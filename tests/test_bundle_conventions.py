"""DESIGN §5 conventions, checked across every bundle: one key vocabulary in every config
(overlays merged over train.yaml), the standard files, metadata fields, YAML 1.1 numbers."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml
from conftest import REPO

with open(os.path.join(REPO, "bundles", "common.yaml"), encoding="utf-8") as _f:
    COMMON = yaml.safe_load(_f)  # the shared vocabulary (DESIGN §5) with the defaults all bundles share
SHARED_KEYS = tuple(COMMON)
BUNDLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "bundles", "reclf_*")))
CONFIGS = [(b, os.path.basename(p)) for b in BUNDLES
           for p in sorted(glob.glob(os.path.join(REPO, "bundles", b, "configs", "*.yaml")))]
STANDARD_FILES = ("configs/metadata.json", "configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml",
                  "configs/multi_gpu_train.yaml", "configs/logging.conf", "docs/README.md", "models")
ZOO_FIELDS = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
              "required_packages_version", "name", "task", "description", "authors", "copyright", "data_source",
              "data_type", "intended_use", "network_data_format")


def _load(bundle: str, name: str) -> dict:
    with open(os.path.join(REPO, "bundles", bundle, "configs", name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_the_bundles_are_there():
    assert {"reclf_pretrain", "reclf_cls"} <= set(BUNDLES)


def test_one_vocabulary():
    """bundles/common.yaml, custom/config_check.SHARED_KEYS and DESIGN §5's table name the same keys."""
    from custom.config_check import SHARED_KEYS as ACCEPTED

    assert set(SHARED_KEYS) == set(ACCEPTED)
    design = os.path.join(os.path.dirname(REPO), "shared", "DESIGN.md")
    if os.path.isfile(design):
        text = open(design, encoding="utf-8").read()
        assert not [k for k in SHARED_KEYS if f"`{k}`" not in text]


@pytest.mark.parametrize("bundle,name", CONFIGS)
def test_every_shared_key_in_every_config(bundle, name):
    """Every config, merged over bundles/common.yaml (and an overlay over train.yaml), has the whole
    vocabulary; a config writes only the vocabulary keys it uses (no "unused here" padding)."""
    own = _load(bundle, name)
    config = {**COMMON, **own}
    if name == "multi_gpu_train.yaml":  # an overlay: checked merged over train.yaml
        config = {**COMMON, **_load(bundle, "train.yaml"), **own}
    missing = [k for k in SHARED_KEYS if k not in config]
    assert not missing, f"{bundle}/{name} lacks {missing}"
    text = open(os.path.join(REPO, "bundles", bundle, "configs", name), encoding="utf-8").read()
    padded = [k for k in SHARED_KEYS if k in own and not any(f"{c}{k}" in text for c in "@%")]
    assert not padded, f"{bundle}/{name} defines {padded} without using them: leave them to bundles/common.yaml"
    # YAML 1.1 reads 1e-3 as a string: learning rates must be written 1.0e-3
    assert not isinstance(config["lr"], str) or config["lr"].startswith(("@", "$")), (bundle, name, config["lr"])
    assert config["bundle_root"] == f"bundles/{bundle}" if "bundle_root" in config else True


@pytest.mark.parametrize("bundle", BUNDLES)
def test_standard_files_and_model_zoo_metadata(bundle):
    root = os.path.join(REPO, "bundles", bundle)
    assert not [f for f in STANDARD_FILES if not os.path.exists(os.path.join(root, f))], bundle
    with open(os.path.join(root, "configs", "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert not [k for k in ZOO_FIELDS if k not in meta], bundle
    assert meta["version"] in meta["changelog"]
    inputs = meta["network_data_format"]["inputs"]
    assert list(inputs)[0] == "image" and len(inputs["image"]["spatial_shape"]) == 2
