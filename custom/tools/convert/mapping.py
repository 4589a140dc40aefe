"""Tensor mappings from the sources' modules onto RECLFModel's: the ResNet image tower, linear /
MLP heads into ProjectionHead (exact or to a stated error), and the BERT text tower."""

from __future__ import annotations


import os
import re

import torch

from ...utils import as_optional_path

from .formats import BN_EPS, CheckpointConversionError, IMAGE_SHIFT, RELU_SCALE, SourceFormat, TEXT_SHIFT


# ---- image tower ---------------------------------------------------------------------------------
def _resnet_name(tower: dict[str, torch.Tensor]) -> str:
    from ...nets.image_encoder import RESNET_SPECS

    bottleneck = "layer1.0.conv3.weight" in tower
    blocks = [1 + max((int(m.group(1)) for k in tower if (m := re.match(rf"layer{i}\.(\d+)\.", k))), default=-1)
              for i in range(1, 5)]
    for name, (block, layers, _, _) in RESNET_SPECS.items():
        if layers == blocks and (block.__name__ == "ResNetBottleneck") == bottleneck:
            return name
    raise CheckpointConversionError(
        f"the image tower is a ResNet with blocks {blocks} ({'bottleneck' if bottleneck else 'basic'}), "
        f"not one of {sorted(RESNET_SPECS)}"
    )


def image_tower_state(
    tower: dict[str, torch.Tensor], mean: float, std: float
) -> tuple[str, dict[str, torch.Tensor], str]:
    """torchvision ResNet tensors → (encoder name, reclf ``ImageEncoder.backbone`` state, note).

    ``conv1`` (64, 3, 7, 7) is summed over RGB (the sources repeat a gray image) and rescaled from
    the source normalisation ((x − mean)/std) to reclf's ((x − 0.449)/0.226); the constant the
    change leaves, conv1's kernel sum × (0.449 − mean)/std per channel, moves into
    ``bn1.running_mean`` (exact away from the 3-pixel zero padding).
    """
    from ...nets.image_encoder import GRAY_MEAN, GRAY_STD

    state = {k: v.detach().clone().float() for k, v in tower.items() if not k.startswith("fc.")}
    name = _resnet_name(state)
    conv1 = state["conv1.weight"].double()
    if conv1.shape[1] == 3:
        conv1 = conv1.sum(dim=1, keepdim=True)
    elif conv1.shape[1] != 1:
        raise CheckpointConversionError(f"conv1 takes {conv1.shape[1]} channels; expected 3 (RGB) or 1")
    offset = (GRAY_MEAN - float(mean)) / float(std) * conv1.sum(dim=(1, 2, 3))  # (64,)
    state["conv1.weight"] = (conv1 * (GRAY_STD / float(std))).float()
    state["bn1.running_mean"] = (state["bn1.running_mean"].double() - offset).float()
    note = (f"{name}: all {len(state)} tensors; conv1 summed over RGB and x{GRAY_STD / float(std):.4g} "
            f"(source normalisation mean {mean}, std {std} -> reclf's {GRAY_MEAN}/{GRAY_STD}), its constant "
            "offset moved into bn1.running_mean (exact except within conv1's 3-pixel zero padding)")
    if any(k.startswith("fc.") for k in tower):
        note += "; the ImageNet classifier fc.* dropped"
    return name, state, note


# ---- heads -----------------------------------------------------------------------------------------
def _head_layers(head: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    first, last = head.net[0], head.net[2]
    if not (isinstance(first, torch.nn.Linear) and isinstance(last, torch.nn.Linear)
            and isinstance(head.net[1], torch.nn.GELU) and head.net[1].approximate == "none"):
        raise TypeError("expected ProjectionHead = Linear -> GELU(exact) -> Linear")
    return first, last


@torch.no_grad()
def linear_into_projection_head(
    head: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, nonnegative_input: bool
) -> str:
    """Make ``head(x)`` compute ``weight @ x + bias``; returns how (for ``model.json``).

    ``2·out ≤ hidden``: exact, hidden units ``W x + b`` and ``−(W x + b)``, since
    GELU(z) − GELU(−z) = z·Φ(z) + z·Φ(−z) = z. Else ``in ≤ hidden``: hidden units ``x + c``,
    GELU(x + c) = (x + c)·Φ(x + c) ≈ x + c for x + c ≫ 0, then ``W (·) + b − W c``.
    """
    first, last = _head_layers(head)
    out_dim, in_dim = weight.shape
    hidden = first.out_features
    if (first.in_features, last.out_features) != (in_dim, out_dim):
        raise CheckpointConversionError(
            f"a Linear({in_dim} -> {out_dim}) does not fit the head Linear({first.in_features} -> {last.out_features})"
        )
    w = weight.double()
    b = bias.double() if bias is not None else torch.zeros(out_dim, dtype=torch.float64)
    w1 = torch.zeros(hidden, in_dim, dtype=torch.float64)
    b1 = torch.zeros(hidden, dtype=torch.float64)
    w2 = torch.zeros(out_dim, hidden, dtype=torch.float64)
    if 2 * out_dim <= hidden:
        eye = torch.eye(out_dim, dtype=torch.float64)
        w1[:out_dim], w1[out_dim:2 * out_dim] = w, -w
        b1[:out_dim], b1[out_dim:2 * out_dim] = b, -b
        w2[:, :out_dim], w2[:, out_dim:2 * out_dim] = eye, -eye
        b2 = torch.zeros(out_dim, dtype=torch.float64)
        how = "exact: GELU(z) - GELU(-z) = z"
    elif in_dim <= hidden:
        shift = IMAGE_SHIFT if nonnegative_input else TEXT_SHIFT
        w1[:in_dim] = torch.eye(in_dim, dtype=torch.float64)
        b1[:in_dim] = shift
        w2[:, :in_dim] = w
        b2 = b - w.sum(dim=1) * shift
        how = (f"GELU(x + {shift:g}) - {shift:g} = x up to (x+{shift:g})*Phi(-(x+{shift:g})): "
               + ("< 1e-8 for the non-negative pooled features" if nonnegative_input
                  else f"exact to float32 rounding for features > {6 - shift:g}"))
    else:
        raise CheckpointConversionError(f"Linear({in_dim} -> {out_dim}) does not fit a head with {hidden} hidden units")
    first.weight.copy_(w1.float()), first.bias.copy_(b1.float())
    last.weight.copy_(w2.float()), last.bias.copy_(b2.float())
    return how


def _fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor, bn: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear followed by an eval-mode BatchNorm1d → one linear (float64)."""
    scale = 1.0 / torch.sqrt(bn["running_var"].double() + BN_EPS)
    if "weight" in bn:
        scale = scale * bn["weight"].double()
    shift = bn["bias"].double() if "bias" in bn else torch.zeros_like(scale)
    return weight.double() * scale[:, None], (bias.double() - bn["running_mean"].double()) * scale + shift


@torch.no_grad()
def mlp_into_projection_head(head: torch.nn.Module, mlp: dict[str, torch.Tensor]) -> str:
    """MGCA's ``GlobalEmbedding`` (``head.0`` Linear, ``head.1`` BN, ReLU, ``head.3`` Linear,
    ``head.4`` BN without affine) into a ProjectionHead: batch norms folded, ReLU(z) ≈ GELU(s z)/s."""
    first, last = _head_layers(head)

    def bn(i: int) -> dict[str, torch.Tensor]:
        return {k: mlp[f"{i}.{k}"] for k in ("weight", "bias", "running_mean", "running_var") if f"{i}.{k}" in mlp}

    w1, b1 = _fold_batchnorm(mlp["0.weight"], mlp["0.bias"], bn(1))
    w2, b2 = _fold_batchnorm(mlp["3.weight"], mlp["3.bias"], bn(4))
    shape_ok = (tuple(w1.shape) == (first.out_features, first.in_features)
                and tuple(w2.shape) == (last.out_features, last.in_features))
    if not shape_ok:
        raise CheckpointConversionError(
            f"MLP {w1.shape[1]} -> {w1.shape[0]} -> {w2.shape[0]} does not fit ProjectionHead "
            f"{first.in_features} -> {first.out_features} -> {last.out_features}"
        )
    first.weight.copy_((w1 * RELU_SCALE).float()), first.bias.copy_((b1 * RELU_SCALE).float())
    last.weight.copy_((w2 / RELU_SCALE).float()), last.bias.copy_(b2.float())
    return (f"Linear-BN-ReLU-Linear-BN: batch norms (running statistics, eps {BN_EPS:g}) folded into the linears, "
            f"ReLU(z) as GELU({RELU_SCALE:g} z)/{RELU_SCALE:g} (error <= {0.17 / RELU_SCALE:.1g} per hidden unit)")


# ---- text tower ------------------------------------------------------------------------------------
TEXT_DIR_REQUIRED = (
    "holds a BERT text tower but no tokenizer vocabulary or model config, which cannot be recovered from "
    "the weights: pass --text_dir, a local Hugging Face folder of the model it was trained from (GLoRIA "
    "and MGCA: emilyalsentzer/Bio_ClinicalBERT) with config.json and vocab.txt or tokenizer.json. Nothing "
    "is downloaded."
)
# BertModel buffers (not weights) that older transformers / BLIP saved, and the unused pooler
_IGNORED_TEXT = re.compile(r"^(embeddings\.position_ids|embeddings\.token_type_ids|pooler\..*)$")


def text_tower(tower: dict[str, torch.Tensor], text_dir: str | None, fmt: SourceFormat, path: str):
    """Rebuild the source BERT as a reclf text model: (HF model, tokenizer, notes, dropped keys).

    Architecture sizes come from the tensors (MGCA keeps 6 of Bio_ClinicalBERT's 12 layers); the
    tokenizer and the remaining config (heads, activation, eps) from ``text_dir``.
    """
    from transformers import AutoConfig, AutoTokenizer

    from ...nets.text_encoder import build_text_model_from_config

    text_dir = as_optional_path(text_dir)
    if text_dir is None:
        raise CheckpointConversionError(f"{path!r} {TEXT_DIR_REQUIRED}")
    if not os.path.isdir(text_dir):
        raise CheckpointConversionError(f"--text_dir {text_dir!r} is not a folder. The checkpoint {TEXT_DIR_REQUIRED}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
        config = AutoConfig.from_pretrained(text_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointConversionError(f"--text_dir {text_dir!r}: cannot load a tokenizer and config: {err}") from err
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointConversionError(
            f"--text_dir {text_dir!r}: no fast tokenizer (reclf maps sub-words to words with it)"
        )
    if getattr(config, "model_type", "") != "bert":
        raise CheckpointConversionError(
            f"--text_dir {text_dir!r} holds a {config.model_type!r} config; the checkpoint's text tower is a BERT"
        )
    words = tower.get("embeddings.word_embeddings.weight")
    if words is None:
        raise CheckpointConversionError(f"{path!r}: no 'embeddings.word_embeddings.weight' under {fmt.text_tower!r}")
    vocab, hidden = words.shape
    layers = 1 + max((int(m.group(1)) for k in tower if (m := re.match(r"encoder\.layer\.(\d+)\.", k))), default=-1)
    sizes = {
        "vocab_size": int(vocab),
        "num_hidden_layers": int(layers),
        "max_position_embeddings": int(tower["embeddings.position_embeddings.weight"].shape[0]),
        "intermediate_size": int(tower["encoder.layer.0.intermediate.dense.weight"].shape[0]),
    }
    if "embeddings.token_type_embeddings.weight" in tower:
        sizes["type_vocab_size"] = int(tower["embeddings.token_type_embeddings.weight"].shape[0])
    if int(config.hidden_size) != int(hidden):
        raise CheckpointConversionError(
            f"--text_dir {text_dir!r} has hidden_size {config.hidden_size}, the checkpoint's text tower {hidden}: "
            "not the model it was trained from"
        )
    if len(tokenizer) > vocab:
        raise CheckpointConversionError(
            f"--text_dir {text_dir!r}: its tokenizer has {len(tokenizer)} tokens, the checkpoint's embedding "
            f"{vocab} rows"
        )
    notes = [f"{k}: {v} from the checkpoint (text_dir config: {getattr(config, k, None)})"
             for k, v in sizes.items() if getattr(config, k, None) != v]
    for k, v in sizes.items():
        setattr(config, k, v)
    config.add_cross_attention, config.is_decoder = False, False
    model = build_text_model_from_config(config)
    target = model.state_dict()
    state = {k: v.detach().clone().float() for k, v in tower.items() if k in target}
    dropped = sorted(k for k in tower if k not in target)
    unexpected = [k for k in dropped if not _IGNORED_TEXT.match(k) and ".crossattention." not in k]
    if unexpected:
        raise CheckpointConversionError(f"{path!r}: text tensors with no place in a BertModel: {unexpected[:5]}")
    missing = sorted(set(target) - set(state))
    if "embeddings.token_type_embeddings.weight" in missing:
        # BLIP's BERT (MGCA) has no token-type table: zeros add nothing, as there
        key = "embeddings.token_type_embeddings.weight"
        state[key] = torch.zeros_like(target[key])
        notes.append("token_type_embeddings: absent in the source (BLIP BERT); set to zeros = no contribution, "
                     "as there")
        missing.remove("embeddings.token_type_embeddings.weight")
    if missing:
        raise CheckpointConversionError(f"{path!r}: the text tower lacks {missing[:5]} ({len(missing)} tensors)")
    if fmt.name == "mgca":
        # MGCA's BertEncoder calls BLIP's BertModel(ids, attn_mask, token_type): the zeros of
        # token_type_ids land in position_ids, so every token was embedded at position 0
        table = state["embeddings.position_embeddings.weight"]
        state["embeddings.position_embeddings.weight"] = table[0].expand_as(table).clone()
        notes.append("position_embeddings: every row set to row 0 (MGCA passes token_type_ids, all zeros, as "
                     "BLIP-BERT's position_ids, so its text tower saw position 0 for every token)")
    model.load_state_dict(state, strict=True)
    return model, tokenizer, notes, dropped
