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
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from ...errors import PACKAGE_DIR
from ...utils import as_bool

BUNDLES = ("reclf_pretrain", "reclf_cls", "reclf_seg")
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

# ---- the model-zoo metadata schema (meta_schema_20240725.json), written out for offline checks -----
# Top-level keys the schema requires, and the keys every tensor of network_data_format requires.
ZOO_REQUIRED = ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                "task", "description", "authors", "copyright", "network_data_format")
ZOO_TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
# Keys the model zoo's own bundles carry and its CI relies on (the version must be in the changelog,
# verify_metadata downloads `schema`), and that MONAI Label / verify_net_in_out read.
ZOO_CONVENTION = ("schema", "changelog", "name", "data_source", "data_type", "intended_use")

_STRING = {"type": "string"}
_TENSOR_SCHEMA = {
    "type": "object",
    "required": list(ZOO_TENSOR_REQUIRED),
    "properties": {
        "type": _STRING, "format": _STRING, "modality": _STRING, "dtype": _STRING,
        "num_channels": {"type": "integer"},
        "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}},
        "value_range": {"type": "array", "items": {"type": "number"}},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object"},
    },
}
ZOO_META_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "title": "MONAI bundle metadata (the required part of meta_schema_20240725.json)",
    "type": "object",
    "required": list(ZOO_REQUIRED),
    "properties": {
        **{k: _STRING for k in ("schema", "version", "monai_version", "pytorch_version", "numpy_version", "name",
                                 "task", "description", "authors", "copyright", "data_source", "data_type",
                                 "image_classes", "label_classes", "pred_classes", "intended_use")},
        "changelog": {"type": "object", "additionalProperties": _STRING},
        "required_packages_version": {"type": "object", "additionalProperties": _STRING},
        "optional_packages_version": {"type": "object", "additionalProperties": _STRING},
        "eval_metrics": {"type": "object"},
        "references": {"type": "array", "items": _STRING},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "additionalProperties": _TENSOR_SCHEMA},
                "outputs": {"type": "object", "additionalProperties": _TENSOR_SCHEMA},
            },
        },
    },
}

_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


def _schema_errors(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    """The keywords ZOO_META_SCHEMA uses (type, required, properties, additionalProperties, items)."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        ok = any(isinstance(value, _JSON_TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in names)
        if not ok:
            return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__} {value!r}"[:200]]
    errors: list[str] = []
    if isinstance(value, dict):
        errors += [f"{where}: missing required key {k!r}" for k in schema.get("required", ()) if k not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            sub = properties.get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                errors += _schema_errors(item, sub, f"{where}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def zoo_metadata_problems(meta: dict[str, Any]) -> list[str]:
    """Everything that keeps ``meta`` (a parsed ``metadata.json``) from being a model-zoo bundle's.

    The required part of the model-zoo schema (``ZOO_META_SCHEMA``; also through ``jsonschema``
    when it is installed), the zoo's conventions (``ZOO_CONVENTION``, the version in the changelog)
    and what MONAI's ``verify_net_in_out`` / MONAI Label read: an input ``image`` and an output
    ``pred``. Returns [] when it is fine.
    """
    if not isinstance(meta, dict):
        return [f"metadata: expected a JSON object, got {type(meta).__name__}"]
    problems = _schema_errors(meta, ZOO_META_SCHEMA, "metadata")
    try:
        import jsonschema
    except ImportError:  # not a requirement: the checks above cover what ZOO_META_SCHEMA says
        jsonschema = None
    if jsonschema is not None and not problems:  # a cross-check of the hand-written validator
        problems += [f"metadata (jsonschema): {e.message}"[:200]
                     for e in jsonschema.Draft4Validator(ZOO_META_SCHEMA).iter_errors(meta)]
    problems += [f"metadata: missing model-zoo field {k!r}" for k in ZOO_CONVENTION if k not in meta]
    if isinstance(meta.get("changelog"), dict) and meta.get("version") not in meta["changelog"]:
        problems.append(f"metadata: version {meta.get('version')!r} has no changelog entry")
    fmt = meta.get("network_data_format")
    if isinstance(fmt, dict):
        if "image" not in (fmt.get("inputs") or {}):
            problems.append("metadata.network_data_format.inputs: no 'image' (what verify_net_in_out feeds)")
        if "pred" not in (fmt.get("outputs") or {}):
            problems.append("metadata.network_data_format.outputs: no 'pred' (what verify_net_in_out checks)")
    return problems


# ---- config rewriting ----------------------------------------------------------------------------

_CUSTOM_IMPORT = re.compile(r"^\$\s*from\s+(custom(?:\.\w+)*)\s+import\s+(\w+)\s*$")
_REF = re.compile(r"@\w*(?:#\w*)*")  # a MONAI reference inside an expression (its own pattern)
_PATH_ITEM = "custom_path"
_ITEM_PREFIX = "custom_"
_PRETRAINED_DEFAULT = "bundles/reclf_pretrain/models/model.pt"


def _custom_imports(imports: Any, where: str) -> dict[str, str]:
    """``{NAME: module}`` for the ``$from custom[.x] import NAME`` entries of an ``imports`` list."""
    found: dict[str, str] = {}
    for entry in imports or []:
        if not isinstance(entry, str):
            continue
        match = _CUSTOM_IMPORT.match(entry.strip())
        if match:
            found[match.group(2)] = match.group(1)
        elif re.match(r"^\$\s*import\s+custom\b", entry.strip()):
            raise ValueError(f"{where}: {entry!r}: write `$from custom import x` (the export rewrites only that form)")
    return found


def rewrite_expression(expr: str, names: Iterable[str]) -> str:
    """``expr`` (a ``$...`` config expression) with every global ``NAME`` of ``names`` read as the
    config item ``@custom_NAME``. References (``@id#key``) are parsed as same-length stand-ins, so
    the Python AST gives the exact spans; names bound inside the expression are refused."""
    names = set(names)
    body = expr[1:]
    if not names or not any(n in body for n in names) or re.match(r"\s*(import|from)\s", body):
        return expr  # nothing to rewrite, or an import statement (kept as it is)
    plain = _REF.sub(lambda m: "_" + m.group()[1:].replace("#", "_"), body)
    try:
        tree = ast.parse(plain, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"cannot parse config expression {expr!r}: {err}") from err
    spans = []
    for node in ast.walk(tree):
        bound = (node.arg if isinstance(node, ast.arg)
                 else node.id if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load) else None)
        if bound in names:
            raise ValueError(f"config expression {expr!r} binds {bound!r}, a name imported from custom: rename it")
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            spans.append((node.lineno, node.col_offset, node.end_col_offset, node.id))
    # ast offsets are UTF-8 byte offsets per line: edit the bytes, last span first
    lines = body.encode("utf-8").split(b"\n")
    for lineno, start, end, name in sorted(spans, reverse=True):
        line = lines[lineno - 1]
        lines[lineno - 1] = line[:start] + f"@{_ITEM_PREFIX}{name}".encode() + line[end:]
    return "$" + b"\n".join(lines).decode("utf-8")


def _map_strings(value: Any, fn) -> Any:
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def _add_requires(value: Any) -> Any:
    """Every ``_target_: custom....`` component gets ``_requires_: "@custom_path"`` (placed right
    after ``_target_``, as the text rewrite writes it)."""
    if isinstance(value, list):
        return [_add_requires(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        out[k] = _add_requires(v)
        if k == "_target_" and isinstance(v, str) and v.startswith("custom."):
            out["_requires_"] = f"@{_PATH_ITEM}"
    return out


def _module_item(module: str, name: str, package_dir: str) -> dict[str, str]:
    """The component that replaces ``$from module import name``, built once ``custom_path`` put the
    code on sys.path (``_requires_``): a submodule through ``importlib.import_module``, anything else
    located as ``module.name`` and returned as it is (``_mode_: callable``). Not an expression: MONAI
    parses any expression containing "import" as Python before it substitutes the ``@`` references."""
    rel = os.path.join(*module.split(".")[1:], name) if "." in module else name
    if os.path.isfile(os.path.join(package_dir, rel + ".py")) or os.path.isfile(os.path.join(package_dir, rel, "__init__.py")):
        return {"_target_": "importlib.import_module", "_requires_": f"@{_PATH_ITEM}", "name": f"{module}.{name}"}
    return {"_target_": f"{module}.{name}", "_requires_": f"@{_PATH_ITEM}", "_mode_": "callable"}


def _bundle_root_expr(export_root: str) -> str:
    """The exported folder while it is there, else the current directory when that is the bundle."""
    root = repr(export_root)
    test = ("os.path.isfile(os.path.join(p, 'configs', 'metadata.json')) "
            "and os.path.isdir(os.path.join(p, 'scripts', 'custom'))")
    return f"$next((p for p in [{root}, os.getcwd()] if {test}), {root})"


# <bundle_root>/scripts first on sys.path (once), or a clear error when bundle_root is not this bundle
_PATH_EXPR = (
    "$(lambda scripts: scripts if os.path.isdir(os.path.join(scripts, 'custom')) "
    "and (scripts in sys.path or not sys.path.insert(0, scripts)) "
    "else exec('raise FileNotFoundError(m)', {'m': 'bundle_root ' + repr(os.path.dirname(scripts)) "
    "+ ' holds no scripts/custom: pass --bundle_root <the exported bundle folder>'}))"
    "(os.path.abspath(os.path.join(@bundle_root, 'scripts')))"
)


def _yaml_scalar(value: str) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML there)."""
    return json.dumps(value, ensure_ascii=False)


def _block_end(lines: list[str], start: int) -> int:
    """Index after the indented block that follows the top-level key on line ``start``."""
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # trailing blank lines stay after the block
        end -= 1
    return end


_QUOTED_EXPR = re.compile(r'"(\$[^"\\]*)"')
_PLAIN_EXPR = re.compile(r"^(\s*(?:- |[\w#+]+:\s+))(\$[^\"'#][^#]*?)(\s+#.*)?$")


def _rewrite_line(line: str, names: set[str]) -> str:
    if not names or "$" not in line or line.lstrip().startswith("#"):
        return line
    line = _QUOTED_EXPR.sub(lambda m: _yaml_scalar(rewrite_expression(m.group(1), names)), line)
    match = _PLAIN_EXPR.match(line)
    if match:
        new = rewrite_expression(match.group(2), names)
        if new != match.group(2):
            line = match.group(1) + _yaml_scalar(new) + (match.group(3) or "")
    return line


class _ConfigRewrite:
    """Rewrite one config file's text (see the module docstring) and the parsed YAML alike."""

    def __init__(self, name: str, filename: str, text: str, base_imports: dict[str, str], package_dir: str,
                 export_root: str, pretrained_value: str, extra_items: dict[str, Any] | None = None) -> None:
        self.where = f"bundles/{name}/configs/{filename}"
        self.name, self.text, self.package_dir = name, text, package_dir
        self.data = yaml.safe_load(text) or {}
        if not isinstance(self.data, dict):
            raise ValueError(f"{self.where}: expected a mapping at the top level")
        self.import_key = "+imports" if "+imports" in self.data else "imports"
        self.own = _custom_imports(self.data.get(self.import_key), self.where)
        self.overlay = self.import_key == "+imports"
        # an overlay (multi_gpu_train.yaml) also uses the names its base config imported
        self.names = set(self.own) | (set(base_imports) if self.overlay else set())
        self.has_targets = bool(re.search(r"^\s*(?:- )?_target_:\s*custom\.", text, re.M))
        self.export_root, self.pretrained_value = export_root, pretrained_value
        self.extra_items = extra_items or {}
        clash = [k for k in self.data if isinstance(k, str) and k.startswith(_ITEM_PREFIX)]
        if clash:
            raise ValueError(f"{self.where}: keys {clash} clash with the export's own custom_* items")

    # -- the parsed form: what the rewritten text must load as ----------------------------------
    def expected(self) -> dict[str, Any]:
        data = _map_strings(copy.deepcopy(self.data), lambda s: rewrite_expression(s, self.names)
                            if s.startswith("$") and not _CUSTOM_IMPORT.match(s.strip()) else s)
        data = _add_requires(data)
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key == self.import_key:
                value = [v for v in value if not (isinstance(v, str) and _CUSTOM_IMPORT.match(v.strip()))]
                value += [s for s in self._needed_imports() if s not in value]
            elif key == "bundle_root":
                value = _bundle_root_expr(self.export_root)
            elif key == "pretrained_ckpt" and value == _PRETRAINED_DEFAULT:
                value = self.pretrained_value
            out[key] = value
            if key == self.import_key:
                out.update(self._new_items())
        out.update(self.extra_items)
        return out

    def _needed_imports(self) -> list[str]:
        return ["$import sys"] if (self.own or self.has_targets) and not self.overlay else []

    def _new_items(self) -> dict[str, Any]:
        items = {} if self.overlay or not (self.own or self.has_targets) else {_PATH_ITEM: _PATH_EXPR}
        items.update({f"{_ITEM_PREFIX}{n}": _module_item(m, n, self.package_dir) for n, m in self.own.items()})
        return items

    # -- the text form (comments kept) -------------------------------------------------------------
    def rewritten_text(self) -> str:
        lines = self.text.split("\n")
        out: list[str] = [
            f"# Exported by `python -m custom export-bundle {self.name}` (docs/README.md, \"Using this exported",
            "# bundle\"): `custom` comes from this bundle's scripts/custom (the custom_* items below), paths",
            f"# written bundles/{self.name}/... below mean this folder; bundle_root defaults to it.",
        ]
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith(f"{self.import_key}:"):
                end = _block_end(lines, i)
                block = [ln for ln in lines[i:end] if not _CUSTOM_IMPORT.match(ln.strip().removeprefix("- ").strip())]
                item_lines = [ln for ln in block[1:] if ln.lstrip().startswith("- ")]
                indent = (item_lines[0][: len(item_lines[0]) - len(item_lines[0].lstrip())] if item_lines else "  ")
                present = {ln.strip().removeprefix("- ").strip() for ln in item_lines}
                last = max((k for k, ln in enumerate(block) if ln.lstrip().startswith("- ")), default=0)
                extra = [f"{indent}- {s}" for s in self._needed_imports() if s not in present]
                block = block[: last + 1] + extra + block[last + 1:]
                out += [_rewrite_line(ln, self.names) for ln in block]
                new_items = self._new_items()
                if new_items:
                    out.append("# ---- exported bundle: this bundle's own code, scripts/custom (replaces `$from custom import ...`)")
                    out += [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in new_items.items()]
                i = end
                continue
            if re.match(r"^bundle_root:", line):
                out.append(f"bundle_root: {_yaml_scalar(_bundle_root_expr(self.export_root))}"
                           "   # the exported folder; --bundle_root PATH where it moved")
                i += 1
                continue
            match = re.match(rf"^pretrained_ckpt:\s*{re.escape(_PRETRAINED_DEFAULT)}\s*(#.*)?$", line)
            if match:
                note = ("the packaged models/pretrained/model.pt" if self.pretrained_value
                        else "no pretraining checkpoint was packaged: random init / run reclf_pretrain first")
                out.append(f"pretrained_ckpt: {_yaml_scalar(self.pretrained_value)}   # (export) {note}")
                i += 1
                continue
            out.append(_rewrite_line(line, self.names))
            target = re.match(r"^(\s*)(- )?_target_:\s*custom\.", line)
            if target:
                out.append(" " * (len(target.group(1)) + (2 if target.group(2) else 0)) + f'_requires_: "@{_PATH_ITEM}"')
            i += 1
        if self.extra_items:
            while out and not out[-1].strip():
                out.pop()
            out.append(yaml.safe_dump(self.extra_items, sort_keys=False, allow_unicode=True).rstrip("\n"))
        return "\n".join(out).rstrip("\n") + "\n"

    def result(self) -> str:
        text = self.rewritten_text()
        if yaml.safe_load(text) != self.expected():
            raise RuntimeError(f"export-bundle: the rewrite of {self.where} does not load as intended "
                               "(an unusual YAML layout there?); please report it with that file")
        leftover = [v for v in _strings(yaml.safe_load(text)) if v.startswith("bundles/")]
        if leftover:
            raise ValueError(f"{self.where}: values {leftover} point into the repository's bundles/ folder")
        return text


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


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


def _updated_metadata(meta: dict[str, Any], name: str, model_meta: dict[str, Any]) -> dict[str, Any]:
    """``network_data_format`` made to describe the packaged weights (their ``model.json``)."""
    meta = copy.deepcopy(meta)
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    size = model_meta.get("image_size")
    if size:
        image["spatial_shape"] = [int(size), int(size)]
        if name == "reclf_seg":
            pred["spatial_shape"] = [int(size), int(size)]
    if name == "reclf_pretrain":
        pred["num_channels"] = int(model_meta.get("model", {}).get("embed_dim", pred["num_channels"]))
    if name == "reclf_cls" and model_meta.get("class_names"):
        classes = [str(c) for c in model_meta["class_names"]]
        old = [pred.get("channel_def", {}).get(str(i)) for i in range(len(pred.get("channel_def", {})))]
        pred.update(num_channels=len(classes), spatial_shape=[1, len(classes)],
                    channel_def={str(i): c for i, c in enumerate(classes)})
        if classes != old:
            kind = "sigmoid per class, multi-label" if model_meta.get("multi_label", True) else "softmax over classes"
            meta["pred_classes"] = f"{len(classes)} probabilities for {', '.join(classes)} ({kind})"
    return meta


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
    model_meta = _read_json(os.path.join(os.path.dirname(weights), "model.json"))
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
