"""The MONAI model-zoo metadata an export writes and checks offline: the required part of
meta_schema_20240725.json written out, a small validator for it, and ``network_data_format`` made
to describe the packaged weights."""

from __future__ import annotations

import copy
from typing import Any


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
