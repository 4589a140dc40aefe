"""Export a bundle as a self-contained MONAI model-zoo folder and zip.

``python -m custom export-bundle NAME --out DIR`` (NAME = reclf_pretrain | reclf_cls | reclf_seg) writes

* ``DIR/NAME/``: ``configs/`` (every config, rewritten as below; ``prompts/`` for reclf_cls),
  ``models/model.pt`` + ``model.json`` (+ ``text/`` for reclf_pretrain), for reclf_cls / reclf_seg
  also ``models/pretrained/`` (the reclf_pretrain checkpoint their train / zero-shot / retrieval
  configs start from, when one is given or found), ``scripts/custom/`` (a copy of this package),
  ``docs/README.md`` (the model card + how to run the export), ``docs/data_license.txt``,
  ``LICENSE``, ``large_files.yml`` (model-zoo format) and ``requirements.txt``;
* ``DIR/NAME.zip``: the same folder (``NAME/...`` inside, as the MONAI bundle specification says).

The configs are rewritten because a MONAI config evaluates every ``$import`` / ``$from`` statement
before any other expression: ``$from custom import demo`` would fail (silently, as a placeholder
that raises later) before an ``imports:`` entry could put the bundle's code on ``sys.path``. So
each ``$from custom[.x] import NAME`` becomes an item ``custom_NAME`` that depends on
``custom_path`` (which puts ``<bundle_root>/scripts`` first on ``sys.path``, or stops with a clear
message), the bare ``NAME`` in every expression becomes ``@custom_NAME``, and every
``_target_: custom....`` component gets ``_requires_: "@custom_path"``. ``bundle_root`` defaults
to the exported folder (its absolute path at export time, else the current directory when that is
the bundle: e.g. after unzipping elsewhere and ``cd``-ing into it); ``--bundle_root`` overrides it.
``pretrained_ckpt: bundles/reclf_pretrain/models/model.pt`` becomes ``models/pretrained/model.pt``
of the export, or ``""`` (random init / "run reclf_pretrain first") when no pretraining
checkpoint is packaged. Comments are kept; the result is checked against the same rewrite done on
the parsed YAML, so a config the text rewrite misreads stops the export instead of shipping.

Modules: :mod:`.rewrite` (the config rewrite), :mod:`.metadata` (model-zoo schema and
``network_data_format``), :mod:`.files` (copying, links, checkpoints, zip), :mod:`.card` (usage,
licence texts); this one assembles the bundle (:func:`export_bundle`, the ``export-bundle`` command).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any

import yaml

from ...errors import PACKAGE_DIR
from ...utils import as_bool
from .card import _data_license, _license_text, _usage
from .files import (
    _check_checkpoint, _copy_checkpoint, _copy_file, _copy_tree, _large_files, _read_json, _refuse_link, _write, _zip_folder,
)
from .metadata import _updated_metadata, zoo_metadata_problems
from ...engines.checkpoints import read_meta
from .rewrite import _ConfigRewrite, _PATH_ITEM, _custom_imports
# the old custom.export names (tests, users): the pieces live in the modules above
from .files import ExportLinkError, _sha256  # noqa: F401,E402
from .metadata import SCHEMA_URL, ZOO_META_SCHEMA, ZOO_REQUIRED, ZOO_TENSOR_REQUIRED  # noqa: F401,E402
from .rewrite import rewrite_expression  # noqa: F401,E402

BUNDLES = ("reclf_pretrain", "reclf_cls", "reclf_seg")

def export_bundle(name: str, out: str, weights: str = "", pretrained: str = "auto", bundles_dir: str = "",
                  zip: Any = True, overwrite: Any = False, license: str = "") -> str:
    """Write ``out/name`` (and ``out/name.zip``): a self-contained model-zoo bundle. Returns the folder.

    Args:
        name: ``reclf_pretrain`` | ``reclf_cls`` | ``reclf_seg``.
        out: the folder to write into.
        weights: the ``model.pt`` to package (``model.json`` and, for reclf_pretrain, ``text/``
            beside it); default ``bundles/NAME/models/model.pt``.
        pretrained: reclf_cls / reclf_seg only: the reclf_pretrain ``model.pt`` packaged as
            ``models/pretrained/`` for their ``pretrained_ckpt``; ``auto`` = the repository's
            ``bundles/reclf_pretrain/models/model.pt`` when it exists; ``""`` / ``none`` = none.
        bundles_dir: the folder holding the source bundles (default: ``bundles/`` of this repository).
        zip: also write ``out/name.zip``. overwrite: replace an existing ``out/name``.
        license: a licence file for ``LICENSE`` (default: the repository's, else a notice).
    """
    package_dir = PACKAGE_DIR  # the whole ``custom`` package (this module lives two levels below it)
    repo_root = os.path.dirname(package_dir)
    bundles_dir = os.path.abspath(bundles_dir or os.path.join(repo_root, "bundles"))
    if name not in BUNDLES:
        raise ValueError(f"bundle name: expected one of {list(BUNDLES)}, got {name!r}")
    source = os.path.join(bundles_dir, name)
    if not os.path.isfile(os.path.join(source, "configs", "metadata.json")):
        raise FileNotFoundError(f"{source!r} has no configs/metadata.json: pass --bundles_dir <repository>/bundles")
    weights = os.path.abspath(weights) if weights else os.path.join(source, "models", "model.pt")
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{weights} not found: bundle {name} has no trained weights yet. Train them first "
            f"(python -m monai.bundle run --config_file bundles/{name}/configs/train.yaml, from the "
            "repository root) or pass --weights PATH/model.pt")
    _check_checkpoint(weights, name == "reclf_pretrain", "--weights")

    pretrained_path = None
    if name != "reclf_pretrain":
        choice = str(pretrained).strip()
        if choice == "auto":
            auto = os.path.join(bundles_dir, "reclf_pretrain", "models", "model.pt")
            pretrained_path = auto if os.path.isfile(auto) else None
        elif choice.lower() not in ("", "none", "false"):
            if not os.path.isfile(choice):
                raise FileNotFoundError(f"--pretrained {choice!r} not found (a reclf_pretrain model.pt, or 'none')")
            pretrained_path = os.path.abspath(choice)
        if pretrained_path:
            _check_checkpoint(pretrained_path, True, "--pretrained")

    meta = _read_json(os.path.join(source, "configs", "metadata.json"))
    model_meta = read_meta(weights, verify=False)  # verified by _check_checkpoint above
    meta = _updated_metadata(meta, name, model_meta)
    problems = zoo_metadata_problems(meta)
    if problems:
        raise ValueError(f"bundles/{name}/configs/metadata.json is not model-zoo ready: " + "; ".join(problems))

    out = os.path.abspath(out)
    final = os.path.join(out, name)
    for path in (final, final + ".zip"):
        _refuse_link(path)  # a link at the destination would send the bundle elsewhere
    if os.path.exists(final) and not as_bool(overwrite, "overwrite"):
        raise FileExistsError(f"{final} exists: pass --overwrite true, or another --out")
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.", dir=out)
    try:
        root = os.path.join(staging, name)
        _build(name, source, root, final, weights, pretrained_path, meta, model_meta, package_dir, repo_root, license)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(root, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if as_bool(zip, "zip"):
        _zip_folder(final, final + ".zip")
    return final


def _build(name: str, source: str, root: str, final: str, weights: str, pretrained_path: str | None,
           meta: dict[str, Any], model_meta: dict[str, Any], package_dir: str, repo_root: str, license: str) -> None:
    """Fill ``root`` (written as if it were ``final``, where it is moved afterwards)."""
    _copy_tree(package_dir, os.path.join(root, "scripts", "custom"),
               skip=lambda folder, n: n == "__pycache__" or n.endswith((".pyc", ".tmp")))
    _copy_checkpoint(weights, os.path.join(root, "models"), name == "reclf_pretrain")
    if pretrained_path:
        _copy_checkpoint(pretrained_path, os.path.join(root, "models", "pretrained"), True)

    configs_src, configs_dst = os.path.join(source, "configs"), os.path.join(root, "configs")
    # everything but the top-level configs (rewritten below): logging.conf, prompts/, recipes/ ...
    _copy_tree(configs_src, configs_dst, skip=lambda folder, n: n == "__pycache__" or (
        folder == configs_src and (n.endswith((".yaml", ".yml")) or n == "metadata.json")))
    pretrained_value = "$os.path.join(@bundle_root, 'models', 'pretrained', 'model.pt')" if pretrained_path else ""
    yamls = sorted(f for f in os.listdir(configs_src) if f.endswith((".yaml", ".yml")))
    base_imports: dict[str, str] = {}
    if "train.yaml" in yamls:
        with open(os.path.join(configs_src, "train.yaml"), encoding="utf-8") as f:
            base_imports = _custom_imports((yaml.safe_load(f) or {}).get("imports"), "train.yaml")
    for filename in yamls:
        _refuse_link(os.path.join(configs_src, filename))
        with open(os.path.join(configs_src, filename), encoding="utf-8") as f:
            text = f.read()
        extra = None
        if name == "reclf_pretrain" and filename == "inference.yaml" and "network_def:" not in text:
            extra = {"network_def": {
                "_target_": "custom.nets.image_tower.PretrainImageTower",
                "_requires_": f"@{_PATH_ITEM}",
                "image_encoder": model_meta.get("image_encoder", "resnet18"),
                "embed_dim": int(model_meta.get("model", {}).get("embed_dim", 128)),
            }}
            text = text.rstrip("\n") + (
                "\n\n# ---- exported bundle: the network MONAI's verify_net_in_out / ckpt_export read --------------\n"
                "# the image tower of the pretraining model (values from models/model.json at export)\n")
        rewrite = _ConfigRewrite(name, filename, text, base_imports, package_dir, final, pretrained_value, extra)
        _write(os.path.join(configs_dst, filename), rewrite.result())
    _write(os.path.join(configs_dst, "metadata.json"), json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    readme = os.path.join(source, "docs", "README.md")
    _refuse_link(readme)
    if os.path.isfile(readme):
        with open(readme, encoding="utf-8") as f:
            card = f.read()
    else:  # a bundle without its model card yet: a short one from the metadata
        card = f"# {meta.get('name', name)}\n\n{meta.get('description', '')}\n\nIntended use: {meta.get('intended_use', '')}\n"
    _write(os.path.join(root, "docs", "README.md"), card.rstrip("\n") + "\n" + _usage(name, meta, bool(pretrained_path), final))
    _write(os.path.join(root, "docs", "data_license.txt"), _data_license(name, meta, model_meta))
    _write(os.path.join(root, "LICENSE"), _license_text(repo_root, license))
    requirements = os.path.join(repo_root, "requirements.txt")
    if os.path.isfile(requirements):
        _copy_file(requirements, os.path.join(root, "requirements.txt"))
    _write(os.path.join(root, "large_files.yml"), _large_files(root))


def main_export(name: str, out: str = "exports", weights: str = "", pretrained: str = "auto", bundles_dir: str = "",
                zip: bool = True, overwrite: bool = False, license: str = "") -> str:
    """Write OUT/NAME (a self-contained MONAI model-zoo bundle) and OUT/NAME.zip.

    Args:
        name: reclf_pretrain | reclf_cls | reclf_seg.
        out: the folder to write into.
        weights: the model.pt to package (default bundles/NAME/models/model.pt; its model.json, and
            for reclf_pretrain its text/, beside it).
        pretrained: reclf_cls / reclf_seg: the reclf_pretrain model.pt packaged as models/pretrained/
            (auto = bundles/reclf_pretrain/models/model.pt when it exists; none = no such copy).
        bundles_dir: the folder of the source bundles (default: this repository's bundles/).
        zip: also write OUT/NAME.zip.
        overwrite: replace an existing OUT/NAME.
        license: a licence file to ship as LICENSE (default: the repository's, else a notice).
    """
    start = time.perf_counter()
    try:
        folder = export_bundle(name, out, weights=weights, pretrained=pretrained, bundles_dir=bundles_dir, zip=zip,
                               overwrite=overwrite, license=license)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"reclf export-bundle: {err}") from err
    packaged = os.path.isdir(os.path.join(folder, "models", "pretrained"))
    print(f"reclf export-bundle: wrote {folder}" + (f" and {folder}.zip" if os.path.isfile(folder + ".zip") else "")
          + f" in {time.perf_counter() - start:.1f} s" + (" (with models/pretrained)" if packaged else ""))
    print(f"  run: python -m monai.bundle run --config_file {folder}/configs/inference.yaml")
    return folder
