"""The pretraining network from config values (:func:`build_reclf_model`: torchvision weights, a
local Hugging Face text tower, an earlier ``model.pt``) and from its self-describing checkpoint
(:func:`save_pretrained` / :func:`load_pretrained`: ``model.pt`` + ``model.json`` + ``text/``,
written and verified by :mod:`.checkpoints`)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..nets.factory import BUILD_KEYS, MODEL_ARGS, _plain, unwrap
from ..nets.freezing import freeze_parts
from ..nets.image_encoder import ImageEncoder
from ..nets.reclf import RECLFModel
from ..nets.text_encoder import TextEncoder, build_text_model, build_text_model_from_config
from ..utils import as_optional_path
from .checkpoints import load_state, read_meta, write_checkpoint
from .image_weights import load_torchvision_weights


def build_reclf_model(
    tokenizer,
    image_encoder: str = "resnet18",
    image_weights: str | None = None,
    image_local_layer: str = "layer3",
    image_global_layer: str = "layer4",
    text_encoder: str | None = None,
    text_config: dict[str, Any] | None = None,
    text_pooling: str = "mean",
    text_readout: str = "last",
    text_readout_layers: int = 1,
    init_ckpt: str | None = None,
    freeze_text_layers: int | str = 0,
    freeze_image: str = "none",
    **model_args: Any,
) -> RECLFModel:
    """The pretraining network from top-level config values.

    Args:
        tokenizer: the run's tokenizer (its size sets the vocabulary of a from-config BERT).
        image_encoder: ``resnet18`` | ``resnet50`` ...; image_weights: torchvision state dict path.
        image_local_layer, image_global_layer: the ResNet stages giving the region grid and the
            global vector (:class:`ImageEncoder`; defaults ``layer3`` / ``layer4``).
        text_encoder: local Hugging Face folder, or ''/None for a small BERT from config.
        text_config: overrides of the small BERT (hidden_size, num_hidden_layers, ...).
        text_pooling: report vector from the ``mean`` of word states or the ``cls`` token.
        text_readout, text_readout_layers: token states from the ``last`` layer, or the ``mean`` /
            ``sum`` of the last k layers (GLoRIA: sum of 4).
        init_ckpt: a previous pretraining ``model.pt`` to start from (loaded strictly).
        freeze_text_layers: 0, N (text embeddings + the first N layers) or ``all``.
        freeze_image: ``none`` | ``stem`` | ``layer1``..``layer4`` (up to and including) | ``all``.
        model_args: :class:`RECLFModel` keyword arguments (objective, srm, irm, ...).

    The returned model carries ``build_config`` (what :func:`save_pretrained` writes to
    ``model.json``) so that a checkpoint rebuilds it without the original config, and
    ``pretrained_parts`` (which towers start from pretrained weights: their ``auto`` learning
    rates in :func:`custom.optim.build_optimizer` are fine-tuning rates).
    """
    unknown = set(model_args) - set(MODEL_ARGS)
    if unknown:
        raise TypeError(f"unknown model arguments {sorted(unknown)}; expected a subset of {list(MODEL_ARGS)}")
    model_args = {k: _plain(k, v) for k, v in model_args.items()}
    init_ckpt = as_optional_path(init_ckpt)
    image = ImageEncoder(image_encoder, local_layer=image_local_layer, global_layer=image_global_layer)
    if init_ckpt is None and as_optional_path(image_weights) is not None:  # an init_ckpt brings its own
        load_torchvision_weights(image.backbone, as_optional_path(image_weights))
    text_model = build_text_model(text_encoder, tokenizer, **(text_config or {}))
    text = TextEncoder(text_model, pooling=text_pooling, readout=text_readout, readout_layers=text_readout_layers)
    model = RECLFModel(image, text, **model_args)
    model.build_config = {"image_encoder": image_encoder, "image_local_layer": image.local_layer,
                          "image_global_layer": image.global_layer, "text_pooling": text_pooling,
                          "text_readout": text.readout, "text_readout_layers": text.readout_layers, "model": model_args}
    model.pretrained_parts = {
        "image": bool(init_ckpt or as_optional_path(image_weights)),
        "text": bool(init_ckpt or as_optional_path(text_encoder)),
    }
    if init_ckpt is not None:
        load_state_dict_strict(model, init_ckpt)
    freeze_parts(model, freeze_text_layers, freeze_image)
    return model


def load_state_dict_strict(model: torch.nn.Module, path: str) -> None:
    """Load a reclf ``model.pt`` strictly, with a message that says what does not match."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found (run reclf_pretrain/configs/train.yaml first?)")
    state = load_state(path)
    try:
        unwrap(model).load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path!r} does not match this model's configuration: {err}") from err


def save_pretrained(model: torch.nn.Module, tokenizer, directory: str, filename: str = "model.pt") -> str:
    """Write the self-describing checkpoint: ``model.pt`` + ``model.json`` + ``text/``, one verified
    set (:func:`custom.checkpoints.write_checkpoint`: atomic files, ``model.json`` last with hashes)."""
    net = unwrap(model)
    return write_checkpoint(os.path.join(directory, filename), net.state_dict(), net.build_config, "pretrain",
                            tokenizer=tokenizer, text_config=net.text_encoder.model.config)


def load_pretrained(ckpt: str, device: str | torch.device = "cpu"):
    """Rebuild (model, tokenizer) from a self-describing ``model.pt`` (its ``model.json`` and ``text/``)."""
    from transformers import AutoConfig, AutoTokenizer

    directory = os.path.dirname(os.path.abspath(ckpt))
    meta = read_meta(ckpt, "pretrain")
    text_dir = os.path.join(directory, meta.get("text", "text"))
    tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
    text = TextEncoder(
        build_text_model_from_config(AutoConfig.from_pretrained(text_dir, local_files_only=True)),
        pooling=meta.get("text_pooling", "mean"),
        readout=meta.get("text_readout", "last"),
        readout_layers=meta.get("text_readout_layers", 1),
    )
    image = ImageEncoder(meta["image_encoder"], local_layer=meta.get("image_local_layer", "layer3"),
                         global_layer=meta.get("image_global_layer", "layer4"))
    model = RECLFModel(image, text, **meta["model"])
    model.build_config = {k: meta[k] for k in BUILD_KEYS if k in meta}
    load_state_dict_strict(model, ckpt)
    return model.to(device).eval(), tokenizer
