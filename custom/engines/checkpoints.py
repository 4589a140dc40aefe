"""The one reader and writer of reclf checkpoints: ``model.pt`` + ``model.json`` (+ ``text/``).

A checkpoint is a set of files that must belong together: the weights (a plain state dict),
``model.json`` (what network they fit, and for a pretraining checkpoint the tokenizer in
``text/``). :func:`write_checkpoint` writes each file atomically (temporary file + rename),
``model.json`` last, and records in it the SHA-256 of every other file of the set and a
``checkpoint_id``. :func:`read_meta` refuses a set whose files do not match it (an interrupted
or mixed write: a ``text/`` of another run beside these weights), naming the file, so a mismatch
is never used silently. Checkpoints written before the hashes existed load with a warning.

Weights are read with ``torch.load(weights_only=True)`` only; a file that is not a state dict is
reported as "not a checkpoint" with its path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any

import torch

from ..utils import as_optional_path, atomic_write_text

FORMAT = "reclf-checkpoint/2"
LEGACY_KINDS = {"reclf-pretrain/1": "pretrain", "reclf-seg/1": "segmentation"}  # before FORMAT (no hashes)
TEXT_DIR = "text"
TRAINED_BY = {
    "pretrain": "run bundles/reclf_pretrain/configs/train.yaml first (or pass --ckpt / --pretrained_ckpt PATH/model.pt)",
    "linear_probe": "run bundles/reclf_cls/configs/train.yaml first (or pass --ckpt PATH/model.pt)",
    "segmentation": "run bundles/reclf_seg/configs/train.yaml first (or pass --ckpt PATH/model.pt)",
}
RESERVED = ("format", "kind", "checkpoint_id", "weights", "text", "files")  # written by write_checkpoint only
logger = logging.getLogger("reclf")
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process
_WARNED: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or its files do not belong together."""


def meta_path(ckpt: str) -> str:
    """``model.pt`` -> ``model.json`` (the manifest beside the weights)."""
    return os.path.splitext(os.path.abspath(ckpt))[0] + ".json"


def sha256_file(path: str) -> str:
    """SHA-256 of a file, cached per process by (path, size, mtime)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def _text_hashes(directory: str) -> dict[str, str]:
    return {f"{TEXT_DIR}/{name}": sha256_file(os.path.join(directory, name))
            for name in sorted(os.listdir(directory)) if os.path.isfile(os.path.join(directory, name))}


def _save_text(tokenizer: Any, config: Any, directory: str) -> dict[str, str]:
    """Write the tokenizer + text-model config as ``directory/text``; returns their hashes.

    Staged in a fresh folder first; swapped in only when its content differs from what is there
    (an identical tokenizer, every epoch of a run, leaves ``text/`` untouched)."""
    target = os.path.join(directory, TEXT_DIR)
    stage = tempfile.mkdtemp(prefix=".text.", dir=directory)
    try:
        tokenizer.save_pretrained(stage)
        if config is not None:
            config.save_pretrained(stage)
        new = {k: v for k, v in _text_hashes(stage).items()}
        if os.path.isdir(target) and _text_hashes(target) == new:
            return new
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=".text.old.", dir=directory)
            os.rmdir(old)
            os.replace(target, old)
        os.replace(stage, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return {k: v for k, v in _text_hashes(target).items()}
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage, ignore_errors=True)


def write_checkpoint(
    ckpt: str, state: dict[str, torch.Tensor], meta: dict[str, Any], kind: str,
    tokenizer: Any = None, text_config: Any = None,
) -> str:
    """Write the set: ``text/`` (when a tokenizer is given), the weights, then ``model.json``.

    Args:
        ckpt: the weights path (``.../model.pt``). state: a plain state dict (no ``module.``).
        meta: what the reader needs to rebuild the network (JSON-serialisable).
        kind: ``pretrain`` | ``linear_probe`` | ``segmentation`` (checked by :func:`read_meta`).
        tokenizer, text_config: a pretraining checkpoint's tokenizer and text-model config.

    Returns ``ckpt``.
    """
    from ..utils import atomic_torch_save

    directory = os.path.dirname(os.path.abspath(ckpt))
    os.makedirs(directory, exist_ok=True)
    files: dict[str, str] = {}
    if tokenizer is not None:
        files.update(_save_text(tokenizer, text_config, directory))
    atomic_torch_save({k: v.detach().cpu() for k, v in state.items()}, ckpt)
    files[os.path.basename(ckpt)] = sha256_file(ckpt)
    manifest: dict[str, Any] = {"format": FORMAT, "kind": kind, "checkpoint_id": uuid.uuid4().hex,
                                "weights": os.path.basename(ckpt)}
    if tokenizer is not None:
        manifest["text"] = TEXT_DIR
    manifest.update({k: v for k, v in meta.items() if k not in RESERVED})
    manifest["files"] = files
    atomic_write_text(json.dumps(manifest, indent=2), meta_path(ckpt))
    return ckpt


def read_meta(ckpt: str, kind: str | None = None, verify: bool = True) -> dict[str, Any]:
    """``model.json`` of the checkpoint ``ckpt``, its file set verified.

    Raises :class:`CheckpointError` when ``ckpt`` or its ``model.json`` is missing or unreadable,
    of another ``kind``, or when a file of the set does not match its recorded SHA-256.
    """
    if not os.path.isfile(ckpt):
        how = TRAINED_BY.get(kind or "", "check the path")
        raise CheckpointError(f"checkpoint {ckpt!r} not found: {how}")
    path = meta_path(ckpt)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path!r} not found beside {ckpt!r}: not a self-describing reclf checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path!r} is not a reclf model.json (not valid UTF-8 JSON: {err})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path!r} is not a reclf model.json (expected an object)")
    fmt = meta.get("format")
    if fmt == FORMAT:
        if kind is not None and meta.get("kind") != kind:
            raise CheckpointError(f"{ckpt!r} is a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
        if verify:
            _verify(ckpt, meta)
    else:
        legacy_kind = LEGACY_KINDS.get(fmt) or meta.get("task")  # linear probes wrote "task" only
        if kind is not None and legacy_kind not in (kind, None):
            raise CheckpointError(f"{ckpt!r} is a {legacy_kind!r} checkpoint, not a {kind!r} one")
        if path not in _WARNED:
            _WARNED.add(path)
            logger.warning("%s was written before checkpoint file hashes (format %r): its files are not verified "
                           "to belong together", path, fmt or "none")
    return meta


def _verify(ckpt: str, meta: dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(ckpt))
    files = meta.get("files") or {}
    if os.path.basename(ckpt) not in files:
        raise CheckpointError(f"{meta_path(ckpt)!r} does not describe {os.path.basename(ckpt)!r} (files: {sorted(files)})")
    for name, expected in files.items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path!r} is missing: the checkpoint set of {meta_path(ckpt)!r} is incomplete")
        if sha256_file(path) != expected:
            raise CheckpointError(
                f"{path!r} does not belong to {meta_path(ckpt)!r} (its SHA-256 differs from the one recorded at "
                "save time): the files were mixed or a write was interrupted. Re-run the training that wrote "
                "them, or restore the folder from a copy"
            )
    if meta.get("text"):
        text_dir = os.path.join(directory, meta["text"])
        extra = sorted(set(_text_hashes(text_dir)) - set(files)) if os.path.isdir(text_dir) else []
        if extra:
            raise CheckpointError(f"{text_dir!r} holds files the checkpoint did not write: {extra}")


def load_state(ckpt: str) -> dict[str, torch.Tensor]:
    """The state dict in ``ckpt`` (``weights_only``; a DDP ``module.`` prefix dropped).

    Anything else (empty, truncated, a pickled object, not a dict of tensors) is "not a checkpoint".
    """
    if not os.path.isfile(ckpt):
        raise CheckpointError(f"checkpoint {ckpt!r} not found")
    if os.path.getsize(ckpt) == 0:
        raise CheckpointError(f"{ckpt!r} is not a checkpoint: the file is empty")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, a pickle of objects, another format: never unpickled
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in reason or "Weights only load failed" in reason:
            reason = "it holds Python objects beyond tensors, which are not loaded"
        raise CheckpointError(f"{ckpt!r} is not a checkpoint (torch.load of tensors failed: {reason})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__ if not isinstance(state, dict) else f"a dict with keys {sorted(map(str, state))[:5]}"
        raise CheckpointError(f"{ckpt!r} is not a checkpoint: expected a state dict of tensors, found {found}")
    return {k.removeprefix("module."): v for k, v in state.items()}


# ---- finding and loading a bundle's checkpoints ------------------------------------------


PRETRAIN_FIRST = "run reclf_pretrain/configs/train.yaml first (or pass --pretrained_ckpt PATH/model.pt)"


def require_checkpoint(ckpt: Any, what: str, how: str) -> str:
    """The checkpoint path, or a clear error naming ``what`` is missing and ``how`` to make it."""
    path = as_optional_path(ckpt)
    if path is None:
        raise FileNotFoundError(f"no {what} given: {how}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} not found: {how}")
    return path


def require_pretrained(ckpt: Any) -> str:
    """The checkpoint path, or a clear error when zero-shot / retrieval have nothing to evaluate."""
    return require_checkpoint(ckpt, "pretrained checkpoint", PRETRAIN_FIRST)


def load_weights_strict(network: torch.nn.Module, ckpt: str, hint: str = "") -> None:
    """Load a plain state dict file (a downstream bundle's ``model.pt``; a DDP ``module.`` prefix is
    dropped) strictly into ``network`` (its DDP wrapper, if any, is looked through); a mismatch
    names the file and ``hint`` (where the network's shape comes from)."""
    from ..nets.factory import unwrap  # lazily: the checkpoint format itself needs no networks

    state = load_state(ckpt)
    try:
        unwrap(network).load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{ckpt!r} does not match network_def{f' ({hint})' if hint else ''}: {err}") from err


def read_model_meta(ckpt: str, image_size: int, kind: str) -> dict[str, Any]:
    """The verified ``model.json`` of a downstream ``model.pt`` (:func:`custom.checkpoints.read_meta`,
    ``kind`` = ``linear_probe`` | ``segmentation``); refuses an ``image_size`` other than the
    training one."""
    meta = read_meta(ckpt, kind)
    if int(meta["image_size"]) != int(image_size):
        raise ValueError(f"image_size {image_size} differs from the {kind} checkpoint's training image_size "
                         f"{meta['image_size']} ({meta_path(ckpt)}): pass --image_size {meta['image_size']}")
    return meta


def optional_pretrained(ckpt: Any) -> str | None:
    """The checkpoint path if it exists; else None with a warning (linear probe / segmentation then
    start from random init: the baseline)."""
    path = as_optional_path(ckpt)
    if path is not None and os.path.isfile(path):
        return path
    if path is None:  # pretrained_ckpt: "" asks for the baseline
        logger.info("no pretrained checkpoint given: starting from random init (the baseline)")
        return None
    logger.warning("pretrained checkpoint %r not found: starting from random init (%s)", path, PRETRAIN_FIRST)
    return None


TRAIN_FIRST = "run bundles/reclf_cls/configs/train.yaml first (or pass --ckpt PATH/model.pt)"


def classifier_meta(ckpt: Any, key: str, default: Any = None) -> Any:
    """``key`` of the JSON beside a classifier checkpoint (``model.pt`` → ``model.json``), or ``default``.

    The linear probe writes ``model.json`` (class_names, multi_label, image_encoder, image_size)
    next to its weights, so inference rebuilds the network the weights belong to. Before any
    training there is no such file: the configs then fall back to the demo's label set.
    """
    path = as_optional_path(ckpt)
    if path is None or not os.path.isfile(path) or not os.path.isfile(meta_path(path)):
        return default
    return read_meta(path, verify=False).get(key, default)  # verified where the weights are loaded


def require_classifier(ckpt: Any) -> str:
    """The classifier checkpoint path, or a clear error naming the command that makes it."""
    return require_checkpoint(ckpt, "classifier checkpoint", TRAIN_FIRST)


def load_classifier_weights(network: torch.nn.Module, ckpt: str) -> None:
    """Load a classifier ``model.pt`` (a plain state dict) strictly into ``network``."""
    load_weights_strict(network, ckpt, "class_names / image_encoder come from the model.json beside it; check "
                        "--class_names / --image_encoder overrides")


# ---- downstream networks on a pretraining checkpoint's image tower ----------------------


def downstream_tower(pretrained_ckpt: str | None, image_encoder: str, encoder_depth: str | None) -> tuple[str, str]:
    """(image encoder, encoder depth) of a downstream network: without a checkpoint ``image_encoder``
    and ``encoder_depth`` (default ``layer4``); with one, what its ``model.json`` says it was built
    with and trained to (``image_global_layer``), read once. A depth deeper than the checkpoint
    trained (stages that never trained) is refused rather than silently used."""
    if not pretrained_ckpt:
        return image_encoder, encoder_depth or "layer4"
    content = read_meta(pretrained_ckpt, verify=False)  # load_image_tower reads the weights next
    trained_to = str(content.get("image_global_layer", "layer4"))
    depth = encoder_depth or trained_to
    if trained_to < depth:  # "layer1" < ... < "layer4"
        raise ValueError(
            f"{pretrained_ckpt!r} was pretrained with image_global_layer={trained_to!r}: its stages after {trained_to} "
            f"never trained, and this network uses them up to encoder_depth={depth!r}. Leave encoder_depth unset "
            f"(the network then stops at {trained_to}) or pretrain with image_global_layer: layer4"
        )
    return content["image_encoder"], depth


def load_image_tower(encoder: torch.nn.Module, ckpt: str) -> None:
    """Copy the ``image_encoder.*`` weights of a pretraining ``model.pt`` into ``encoder`` (strict)."""
    state = load_state(ckpt)
    prefix = "image_encoder."
    tower = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not tower:
        raise ValueError(f"{ckpt!r} holds no '{prefix}*' weights: not a reclf pretraining checkpoint")
    try:
        encoder.load_state_dict(tower, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{ckpt!r}: its image tower does not match {type(encoder).__name__}: {err}") from err


def build_classifier(num_classes: int, image_encoder: str = "resnet18", pretrained_ckpt: Any = "",
                     freeze_encoder: bool = True, encoder_depth: str | None = None) -> torch.nn.Module:
    """The reclf_cls network: :class:`custom.nets.classifier.ImageClassifier`, its encoder
    initialised from a pretraining checkpoint's image tower.

    Args:
        num_classes: C output logits. image_encoder: ``resnet18`` | ``resnet50`` ... (ignored when
            ``pretrained_ckpt`` is given: the checkpoint's own encoder, from its ``model.json``).
        pretrained_ckpt: a ``reclf_pretrain`` ``model.pt``; ``""`` / None = random init (the baseline).
        freeze_encoder: linear probing (no encoder gradients, eval-mode batch norm).
        encoder_depth: the deepest ResNet stage run, whose pooled features feed the head; None =
            the stages the checkpoint trained (its ``image_global_layer``; ``layer4`` without one).
            Deeper than the checkpoint trained is refused.

    Returns:
        the network; forward: images (B, 1, H, W) in [0, 1] -> logits (B, C).
    """
    from ..nets.classifier import ImageClassifier

    ckpt = as_optional_path(pretrained_ckpt)
    name, depth = downstream_tower(ckpt, image_encoder, encoder_depth)
    net = ImageClassifier(num_classes, name, freeze_encoder=freeze_encoder, encoder_depth=depth)
    if ckpt:
        load_image_tower(net.encoder, ckpt)
    return net


def build_segmenter(image_encoder: str = "resnet18", pretrained_ckpt: Any = "", freeze_encoder: Any = False,
                    out_channels: int = 1, decoder_channels: Any = (128, 64, 32, 16),
                    encoder_depth: str | None = None) -> torch.nn.Module:
    """The reclf_seg network: :class:`custom.nets.seg_unet.SegUNet`, its encoder initialised from a
    pretraining checkpoint's image tower (arguments as :func:`build_classifier`; ``out_channels``
    and ``decoder_channels`` as SegUNet's; ``encoder_depth``: where the U-Net's encoder stops,
    None = the stages the checkpoint trained).

    Returns:
        the network; forward: images (B, 1, H, W), H and W multiples of 32 (of the stride of
        ``encoder_depth``) -> logits (B, out_channels, H, W).
    """
    from ..nets.seg_unet import SegUNet

    ckpt = as_optional_path(pretrained_ckpt)
    name, depth = downstream_tower(ckpt, image_encoder, encoder_depth)
    net = SegUNet(name, freeze_encoder=freeze_encoder, out_channels=out_channels, decoder_channels=decoder_channels,
                  encoder_depth=depth)
    if ckpt:
        load_image_tower(net.encoder, ckpt)
    return net


def network_from_meta(meta: dict[str, Any]) -> torch.nn.Module:
    """The untrained network a downstream ``model.json`` describes (``network``: ``SegUNet`` |
    ``ImageClassifier``, its encoder and output size); the evaluate configs load the weights into it
    with MONAI's ``CheckpointLoader``."""
    name = meta.get("network")
    if name == "SegUNet":
        from ..nets.seg_unet import SegUNet

        return SegUNet(meta["image_encoder"], out_channels=int(meta.get("out_channels", 1)),
                       encoder_depth=meta.get("encoder_depth", "layer4"))
    if name == "ImageClassifier" or (name is None and "class_names" in meta):  # linear probes name no network
        from ..nets.classifier import ImageClassifier

        return ImageClassifier(len(meta["class_names"]), image_encoder=meta["image_encoder"],
                               encoder_depth=meta.get("encoder_depth", "layer4"))
    raise CheckpointError(f"model.json names network {name!r}: expected SegUNet or ImageClassifier")
