"""Convert published GLoRIA and MGCA checkpoints into self-describing reclf checkpoints.

``python -m custom convert-checkpoint gloria|mgca PATH --out DIR --text_dir HF_DIR [--trust_pickle true]``
writes ``DIR/model.pt`` + ``model.json`` + ``text/`` (DESIGN §5), which
:func:`custom.engines.pretrained.load_pretrained` and every reclf_cls config read (``--pretrained_ckpt
DIR/model.pt``): zero-shot, retrieval and the linear probe then compare the baselines with RECLF under
one harness. What carries over, what is set and what is re-initialised is written into
``model.json`` under ``converted_from``.

Source layouts (PyTorch Lightning ``.ckpt`` files holding ``state_dict``):

* GLoRIA (Huang et al. 2021, marshuang80/gloria): ``gloria.img_encoder.model.*`` a torchvision ResNet
  (``fc`` = Identity), ``gloria.img_encoder.global_embedder`` Linear(F→E),
  ``gloria.img_encoder.local_embedder`` Conv1×1(C3→E, no bias), ``gloria.text_encoder.model.*`` a
  Hugging Face ``BertModel`` (Bio_ClinicalBERT, with pooler) and no text projection (E = BERT width).
  Temperatures 4 (attention), 5 (word pooling), 10 (local and global logits).
* MGCA (Wang et al. 2022, HKU-MedAI/MGCA): ``img_encoder_q.model.*`` a torchvision ResNet-50
  (ViT-B/16 checkpoints are refused: reclf encoders are ResNets), ``img_encoder_q.global_embed.head``
  and ``text_encoder_q.global_embed.head`` = Linear → BatchNorm1d → ReLU → Linear →
  BatchNorm1d(affine=False) (768/2048 → 2048 → 128), ``text_encoder_q.model.*`` BLIP's BERT
  (6 layers of Bio_ClinicalBERT, no token-type embeddings, unused cross-attention), global
  temperature 0.07; local embedders, token-attention layers and prototypes (MGCA's local and
  prototype terms).

Mappings onto :class:`~custom.nets.reclf.RECLFModel` (its heads are ``ProjectionHead`` =
Linear(in, in) → GELU → Linear(in, out)):

* ResNet: same parameter names (MONAI ResNet in torchvision layout); ``conv1`` summed over RGB
  (the sources feed a gray image repeated on three channels: exact). The sources normalise inputs
  with mean/std 0.5; reclf's encoder with 0.449/0.226, so ``conv1`` is rescaled by 0.226/0.5 and the
  constant offset is moved into ``bn1.running_mean``: identical outputs except within conv1's 3-pixel
  zero padding, which stands for intensity 0.449 instead of 0.5.
* A linear head into a ProjectionHead: when 2·out ≤ hidden, exactly, through
  GELU(z) − GELU(−z) = z (rows W and −W); otherwise through a shifted identity,
  GELU(x + c) − c = x up to (x+c)·Φ(−(x+c)) (c = 6 for the non-negative pooled image features:
  < 1e-8; c = 50 for text features: exact to float32 rounding for x > −44).
* MGCA's MLP heads: both batch norms (eval statistics, eps 1e-5) folded into the linears and
  ReLU(z) ≈ GELU(s·z)/s with s = 1000 (error ≤ 0.17/s per hidden unit, at |z| ≈ 0.75/s only),
  when the hidden widths agree (image: 2048 = 2048). The text head (768 → 2048 → 128) does not
  fit ProjectionHead(768, hidden 768): it is re-initialised, so a converted MGCA checkpoint serves
  the linear probe, not zero-shot / retrieval (``model.json`` says so).
* MGCA's BERT is called with ``token_type_ids`` (all zeros) in the ``position_ids`` slot of BLIP's
  BertModel, so every token used position embedding 0: all position rows are set to row 0, which
  reproduces it with the standard positions. Its missing token-type table is set to zeros (= none).

Modules: :mod:`.formats` (the source layouts and constants), :mod:`.lightning` (the restricted
reader of ``.ckpt`` files), :mod:`.mapping` (tower and head mappings); this one runs the conversion
(:func:`convert_checkpoint`, the ``convert-checkpoint`` command).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ...utils import as_bool, as_choice, as_optional_path

from .formats import CheckpointConversionError, FORMATS, SOURCES
from .lightning import _Keys, _find_root, _group, read_lightning_state_dict
from .mapping import image_tower_state, linear_into_projection_head, mlp_into_projection_head, text_tower


# ---- the conversion ----------------------------------------------------------------------------------
def _lists_unused(keys: _Keys) -> dict[str, int]:
    return {keys.root + k: n for k, n in keys.unused().items()}


def convert_checkpoint(
    source: str,
    path: str,
    out: str,
    text_dir: str | None = None,
    trust_pickle: bool | str = False,
    source_mean: float | None = None,
    source_std: float | None = None,
    overwrite: bool | str = False,
) -> dict[str, Any]:
    """Convert a GLoRIA / MGCA checkpoint into ``out/model.pt`` + ``model.json`` + ``text/``.

    Args:
        source: ``gloria`` | ``mgca``. path: the published ``.ckpt``. out: output folder.
        text_dir: local Hugging Face folder of the text model it was trained from (tokenizer + config).
        trust_pickle: allow full unpickling when ``weights_only`` loading refuses the file.
        source_mean, source_std: the source's input normalisation (default 0.5 / 0.5, as both use).
        overwrite: replace an existing ``out/model.pt``.

    Returns the ``converted_from`` record written into ``model.json``.
    """
    from ...engines.pretrained import save_pretrained
    from ...nets.image_encoder import ImageEncoder
    from ...nets.reclf import RECLFModel
    from ...nets.text_encoder import TextEncoder

    fmt = FORMATS[as_choice(source, SOURCES, "source")]
    out = as_optional_path(out)
    if out is None:
        raise CheckpointConversionError("--out DIR is required (the folder that receives model.pt, model.json, text/)")
    if os.path.exists(os.path.join(out, "model.pt")) and not as_bool(overwrite, "overwrite"):
        raise CheckpointConversionError(
            f"{os.path.join(out, 'model.pt')!r} exists: pass --overwrite true to replace it"
        )
    mean = fmt.mean if source_mean is None else float(source_mean)
    std = fmt.std if source_std is None else float(source_std)
    state, read_info = read_lightning_state_dict(path, trust_pickle)
    root = _find_root(state, fmt, path)
    keys = _Keys(state, root)

    encoder_name, backbone, image_note = image_tower_state(keys.take(fmt.image_tower), mean, std)
    text_model, tokenizer, text_notes, text_dropped = text_tower(keys.take(fmt.text_tower), text_dir, fmt, path)
    image = ImageEncoder(encoder_name)
    image.backbone.load_state_dict(backbone, strict=True)
    hidden = int(text_model.config.hidden_size)

    carried = {"image_encoder": image_note,
               "text_encoder": f"BERT, all tensors (num_hidden_layers {text_model.config.num_hidden_layers}, "
                               f"hidden_size {hidden})"}
    set_values: dict[str, str] = {}
    reinit: dict[str, str] = {}
    differences: list[str] = []
    if fmt.name == "gloria":
        w_g, b_g = keys.get("img_encoder.global_embedder.weight"), keys.get("img_encoder.global_embedder.bias")
        w_l = keys.get("img_encoder.local_embedder.weight")
        embed_dim, local_dim = int(w_g.shape[0]), int(w_l.shape[0])
        if (w_g.shape[1], w_l.shape[1]) != (image.global_channels, image.local_channels):
            raise CheckpointConversionError(
                f"GLoRIA's embedders take {w_g.shape[1]} (global) and {w_l.shape[1]} (local) channels; the "
                f"{encoder_name} tower gives {image.global_channels} (layer4) and {image.local_channels} (layer3)"
            )
        if local_dim != hidden:
            raise CheckpointConversionError(
                f"GLoRIA's word features are the BERT states (width {hidden}) but local_embedder gives {local_dim}"
            )
        model_args = {"objective": "gloria", "embed_dim": embed_dim, "local_dim": local_dim, "gloria_pooling": "sum",
                      "global_scale": 10.0, "local_scale": 10.0, "attention_scale": 4.0, "pooling_scale": 5.0,
                      "learn_scales": False}
        text_pooling = "mean"
        readout = {"readout": "sum", "readout_layers": min(4, int(text_model.config.num_hidden_layers))}
        model = RECLFModel(image, TextEncoder(text_model, pooling=text_pooling, **readout), **model_args)
        set_values["text_readout"] = f"sum of the last {readout['readout_layers']} layers (GLoRIA's last_n_layers 4, sum)"
        carried["image_projection"] = "global_embedder Linear -> " + linear_into_projection_head(
            model.image_projection, w_g, b_g, nonnegative_input=True)
        with torch.no_grad():
            model.region_projection.weight.copy_(w_l.float().view_as(model.region_projection.weight))
            model.region_projection.bias.zero_()
            model.word_projection.weight.copy_(torch.eye(hidden))
            model.word_projection.bias.zero_()
        carried["region_projection"] = "local_embedder 1x1 conv (no bias: bias 0)"
        set_values["text_projection"] = "identity (GLoRIA has no text projection): " + linear_into_projection_head(
            model.text_projection, torch.eye(hidden), None, nonnegative_input=False)
        set_values["word_projection"] = "identity (GLoRIA's word features are the BERT states)"
        set_values["scales"] = "GLoRIA's fixed temperatures: " + fmt.temperature_note
        differences += [
            "text read-out: both sum the last 4 BERT layers; reclf averages sub-words into words and takes the report "
            "vector as the mean of its words, GLoRIA sums sub-words and averages over padded word slots too",
            "GLoRIA pooling: reclf's GloriaPoolingScorer (GLoRIA's released attention order, log-sum-exp x5)",
        ]
    else:
        img_head = keys.take("img_encoder_q.global_embed.head.")
        txt_head = keys.take("text_encoder_q.global_embed.head.")
        if "3.weight" not in img_head or "3.weight" not in txt_head:
            raise CheckpointConversionError(
                f"{path!r}: no MGCA global_embed heads (img_encoder_q/text_encoder_q.global_embed.head.*)"
            )
        embed_dim = int(img_head["3.weight"].shape[0])
        model_args = {"objective": "convirt", "embed_dim": embed_dim, "global_scale": 1 / 0.07, "learn_scales": False}
        text_pooling = "cls"  # MGCA's report feature is the [CLS] state of the last layer
        model = RECLFModel(image, TextEncoder(text_model, pooling=text_pooling), **model_args)
        try:
            carried["image_projection"] = "img_encoder_q.global_embed " + mlp_into_projection_head(
                model.image_projection, img_head)
        except CheckpointConversionError as err:
            reinit["image_projection"] = str(err)
        try:
            carried["text_projection"] = "text_encoder_q.global_embed " + mlp_into_projection_head(
                model.text_projection, txt_head)
        except CheckpointConversionError as err:
            reinit["text_projection"] = (f"MGCA's {err} (a hidden layer of {txt_head['0.weight'].shape[0]} "
                                         f"units vs reclf's {hidden})")
        set_values["scales"] = "MGCA's fixed temperature: " + fmt.temperature_note
        set_values["text_pooling"] = "cls: MGCA's report feature is the last layer's [CLS] state (exact)"
        differences += [
            "local alignment: MGCA's token-level cross-attention alignment (local_embed MLPs, local temperature 0.1) "
            "and its prototype clustering have no reclf counterpart: objective 'convirt' (global term only)",
        ]
    differences += [
        "RECLF's SRM / IRM, matching features and position codes have no counterpart in the source: the converted "
        f"model has objective {model_args['objective']!r} and none of these modules (it loads as such; it cannot "
        "initialise an objective 'reclf' run)",
        f"source input: {fmt.input_note}; evaluate at a comparable --image_size (e.g. 224)",
    ]
    dropped = _lists_unused(keys)
    for k in text_dropped:  # tensors with no place in BertModel (pooler, buffers, unused cross-attention)
        group = root + fmt.text_tower + _group(k)
        dropped[group] = dropped.get(group, 0) + 1
    zero_shot_ready = "image_projection" in carried and "text_projection" not in reinit
    converted_from = {
        "source": fmt.name,
        "paper": fmt.paper,
        "file": os.path.abspath(path),
        "file_bytes": os.path.getsize(path),
        **read_info,
        "state_dict_root": root,
        "text_dir": os.path.abspath(text_dir) if text_dir else None,
        "source_normalisation": {"mean": mean, "std": std},
        "carried_over": carried,
        "set": set_values,
        "reinitialised": reinit,
        "dropped_source_tensors": dict(sorted(dropped.items())),
        "text_notes": text_notes,
        "differences": differences,
        "zero_shot_ready": zero_shot_ready,
        "use": ("zero-shot, retrieval and linear probe" if zero_shot_ready
                else "linear probe / segmentation (the image tower); not zero-shot or retrieval: the text "
                     "projection is re-initialised"),
    }
    text = model.text_encoder
    model.build_config = {"image_encoder": encoder_name, "text_pooling": text_pooling, "text_readout": text.readout,
                          "text_readout_layers": text.readout_layers, "model": model_args,
                          "converted_from": converted_from}
    save_pretrained(model.eval(), tokenizer, out)
    return converted_from


def main_convert(
    source: str,
    path: str,
    out: str | None = None,
    text_dir: str | None = None,
    trust_pickle: bool | str = False,
    source_mean: float | None = None,
    source_std: float | None = None,
    overwrite: bool | str = False,
) -> None:
    """``python -m custom convert-checkpoint gloria|mgca PATH --out DIR --text_dir HF_DIR [--trust_pickle true]``

    Converts a published GLoRIA / MGCA checkpoint into a reclf checkpoint folder (model.pt,
    model.json, text/) for ``--pretrained_ckpt DIR/model.pt``; prints what carried over, what was
    set and what was re-initialised (also in model.json under ``converted_from``).
    """
    try:
        info = convert_checkpoint(source, path, out, text_dir=text_dir, trust_pickle=trust_pickle,
                                  source_mean=source_mean, source_std=source_std, overwrite=overwrite)
    except CheckpointConversionError as err:
        raise SystemExit(f"convert-checkpoint: {err}") from None
    target = os.path.join(str(out), "model.pt")
    lines = [f"convert-checkpoint: {info['source']} {info['file']} -> {target} ({info['read_with']})"]
    for title, key in (("carried over", "carried_over"), ("set", "set"), ("re-initialised", "reinitialised")):
        for name, how in info[key].items():
            lines.append(f"  {title:>14}: {name}: {how}")
    for name, count in info["dropped_source_tensors"].items():
        lines.append(f"  {'not used':>14}: {name} ({count} tensor{'s' if count != 1 else ''})")
    for note in info["text_notes"] + info["differences"]:
        lines.append(f"  {'note':>14}: {note}")
    lines.append(f"  use it for: {info['use']}  (--pretrained_ckpt {target})")
    print("\n".join(lines), flush=True)
