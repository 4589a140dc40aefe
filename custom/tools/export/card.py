"""The texts an export writes beside the code: the model card's usage section, the licence and
the data licence notes."""

from __future__ import annotations

import json
import os
from typing import Any


def _usage(name: str, meta: dict[str, Any], pretrained: bool, root: str) -> str:
    net = ("the image tower (custom.nets.image_tower.PretrainImageTower: image (B, 1, H, W) -> L2-normalised "
           "global embedding (B, embed_dim)); it loads the full models/model.pt and keeps the image_* weights"
           if name == "reclf_pretrain" else "`network_def` of inference.yaml, as MONAI Label loads it")
    # SegUNet's forward does not compile with torch.jit.script; tracing it (at the metadata's size) works
    trace = " --use_trace true" if name == "reclf_seg" else ""
    lines = [
        "",
        "## Using this exported bundle",
        "",
        f"This folder was written by `python -m custom export-bundle {name}` (bundle version "
        f"{meta.get('version')}). It needs the packages of `requirements.txt` (versions in",
        "`configs/metadata.json`, `required_packages_version`) and nothing else: the reclf code it runs is",
        "`scripts/custom`, which the configs put on `sys.path` themselves (no PYTHONPATH, any working",
        "directory). From the folder that holds the bundle:",
        "",
        f"    python -m monai.bundle run --config_file {name}/configs/inference.yaml [--key value ...]",
        f"    python -m monai.bundle run --config_file {name}/configs/evaluate.yaml",
        f"    python -m monai.bundle verify_net_in_out network_def --meta_file {name}/configs/metadata.json \\",
        f"        --config_file {name}/configs/inference.yaml",
        f"    python -m monai.bundle ckpt_export network_def --bundle_root {name} \\",
        f"        --config_file {name}/configs/inference.yaml{trace}   # writes {name}/models/model.ts",
        "",
        f"- `bundle_root` defaults to the folder the bundle was exported to ({root}), or to the current",
        "  directory when that folder is gone and the current directory is the bundle (unzip, `cd` into",
        "  it, run with `--config_file configs/...`); anywhere else pass `--bundle_root PATH`.",
        "  `output_dir` (eval/, models/, logs/) is `bundle_root` unless overridden.",
        "- Without `--datalist` / `--dataset_dir` the configs run on the generated demo data, written on",
        "  first use to `data/demo` under the current directory.",
        f"- `ckpt_export` / `verify_net_in_out` use {net}.",
        "- `models/model.pt` loads with `torch.load(..., weights_only=True)`; `model.json` beside it says",
        "  how it was built. `large_files.yml` lists the weight files with their SHA-256 and an empty `url`:",
        "  fill it in after uploading the files (the model zoo keeps files over 25 MB out of its repository).",
    ]
    if name != "reclf_pretrain":
        lines.append(
            "- `pretrained_ckpt` (train / zero-shot / retrieval) is the packaged `models/pretrained/model.pt`."
            if pretrained else
            "- No pretraining checkpoint is packaged: `pretrained_ckpt` is \"\" (training starts from random "
            "init; zero-shot and retrieval need `--pretrained_ckpt PATH/model.pt`).")
    return "\n".join(lines) + "\n"


def _license_text(repo_root: str, license_file: str) -> str:
    for path in ([license_file] if license_file else []) + [os.path.join(repo_root, n) for n in ("LICENSE", "LICENSE.txt")]:
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    if license_file:
        raise FileNotFoundError(f"--license {license_file!r} not found")
    return (
        "No licence has been chosen for this code and these weights yet: the repository this bundle was\n"
        "exported from has no LICENSE file (export again with --license FILE to include one). Until its\n"
        "authors (configs/metadata.json, \"authors\") publish one, ask them before redistributing.\n\n"
        "Run-time dependencies (installed separately, not part of this bundle) carry their own licences,\n"
        "e.g. MONAI (Apache-2.0), PyTorch (BSD-3-Clause), PyTorch-Ignite (BSD-3-Clause), Hugging Face\n"
        "transformers and tokenizers (Apache-2.0). docs/data_license.txt covers the data.\n"
    )


def _data_license(name: str, meta: dict[str, Any], model_meta: dict[str, Any]) -> str:
    recorded = {k: model_meta[k] for k in ("pretrained_ckpt", "label_fraction", "n_train", "converted_from")
                if k in model_meta}
    return (
        f"Data licence notes for {name} {meta.get('version')}\n\n"
        "This file cannot tell which data the packaged weights were trained on: the exporting user\n"
        "trained them. The terms of that data apply to the weights; check them before sharing.\n"
        + (f"models/model.json records: {json.dumps(recorded)}\n" if recorded else "")
        + f"\nData source (metadata.json): {meta.get('data_source', 'not stated')}\n\n"
        "- Default data (no datalist override): the generated demo set (`python -m custom demo`): synthetic\n"
        "  images, reports and masks made by reclf's own generator; no third-party data, no restrictions.\n"
        "- Public sets the configs can be pointed at carry their own terms, e.g. the ieee8023 COVID-19\n"
        "  chest X-ray collection (a licence per image, mostly CC BY-NC-SA, some CC BY; V7 Labs lung\n"
        "  masks CC BY 4.0), Indiana University / OpenI reports (CC BY-NC-ND 4.0), MIMIC-CXR (PhysioNet\n"
        "  credentialed access and data use agreement), CheXpert (Stanford research use agreement),\n"
        "  SIIM-ACR pneumothorax and RSNA pneumonia (Kaggle competition rules). See each data set's page.\n"
    )
