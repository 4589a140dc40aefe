"""Convert published GLoRIA and MGCA checkpoints into self-describing reclf checkpoints.

``python -m custom convert-checkpoint gloria|mgca PATH --out DIR --text_dir HF_DIR [--trust_pickle true]``
writes ``DIR/model.pt`` + ``model.json`` + ``text/`` (DESIGN §5), which
:func:`custom.nets.factory.load_pretrained` and every reclf_cls config read (``--pretrained_ckpt
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
"""

from __future__ import annotations

import os
import _compat_pickle
import pickle
import re
import types
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ...utils import as_bool, as_choice, as_optional_path

SOURCES = ("gloria", "mgca")
TEXT_SHIFT = 50.0  # identity through GELU for features > -44 (BERT hidden states stay far above)
IMAGE_SHIFT = 6.0  # pooled ReLU features are >= 0: GELU(x + 6) - 6 = x to < 1e-8
RELU_SCALE = 1000.0  # ReLU(z) ~ GELU(s z) / s
BN_EPS = 1e-5  # torch BatchNorm1d default (eps is not stored in state dicts)


class CheckpointConversionError(ValueError):
    """A source checkpoint cannot be read or converted; the message says why and what to pass."""


@dataclass(frozen=True)
class SourceFormat:
    """Where a source keeps its towers and heads (relative to the LightningModule root)."""

    name: str
    image_tower: str
    text_tower: str
    temperature_note: str
    paper: str
    input_note: str
    mean: float = 0.5
    std: float = 0.5


FORMATS = {
    "gloria": SourceFormat(
        "gloria", "img_encoder.model.", "text_encoder.model.",
        "attention 4, word pooling 5, local and global logits x10 (fixed)",
        "Huang et al., GLoRIA, ICCV 2021 (github.com/marshuang80/gloria)",
        "3-channel gray, mean/std 0.5, 224 px crops upsampled to 299 inside the encoder",
    ),
    "mgca": SourceFormat(
        "mgca", "img_encoder_q.model.", "text_encoder_q.model.",
        "global logits / 0.07 (fixed)",
        "Wang et al., MGCA, NeurIPS 2022 (github.com/HKU-MedAI/MGCA)",
        "3-channel gray, mean/std 0.5, 224 px crops upsampled to 299 inside the encoder",
    ),
}


# ---- reading a Lightning checkpoint -------------------------------------------------------------
class _Placeholder:
    """Stands in for a pickled object whose class cannot be imported (e.g. an OmegaConf config
    when omegaconf is not installed): only the tensors of ``state_dict`` are used."""

    def __new__(cls, *args: Any, **kwargs: Any):
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.__dict__.setdefault("_list", []).extend(values)


# Modules whose callables a checkpoint has no business naming: a pickle that does is an attack,
# not a hyper-parameter object, and is refused outright (everything else outside the allow-list
# becomes an inert placeholder, so no code of it runs either way).
_REFUSED_MODULES = ("os", "posix", "nt", "subprocess", "sys", "builtins", "shutil", "socket", "importlib", "runpy",
                    "pickle", "marshal", "types", "ctypes", "code", "codeop", "pty", "webbrowser", "http", "urllib",
                    "requests", "io", "functools", "operator", "inspect", "signal", "multiprocessing", "asyncio")
# beside torch's own weights-only allow-list: numpy arrays and scalars, argparse / collections containers
_EXTRA_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
    ("numpy", "dtype"), ("argparse", "Namespace"), ("collections", "defaultdict"), ("collections", "deque"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "range"),
}


def _allowed_globals() -> set[tuple[str, str]]:
    """torch's weights-only allow-list (tensors, storages, dtypes, OrderedDict ...) + :data:`_EXTRA_ALLOWED`."""
    allowed = set(_EXTRA_ALLOWED)
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed |= {tuple(name.rsplit(".", 1)) for name in _get_allowed_globals()}
    except ImportError:  # a torch without the private helper: the public safe globals still count
        pass
    allowed |= {(getattr(g, "__module__", ""), getattr(g, "__qualname__", "")) for g in torch.serialization.get_safe_globals()
                if not isinstance(g, tuple)}
    return allowed


def _restricted_pickle_module(placeholders: list[str]) -> types.ModuleType:
    """A ``pickle``-like module for ``torch.load(weights_only=False)`` whose unpickler resolves only
    tensor / numpy / container classes (torch's weights-only allow-list and :data:`_EXTRA_ALLOWED`),
    refuses callables of :data:`_REFUSED_MODULES` and turns every other class (Lightning's
    ``AttributeDict``, an OmegaConf config, a project's own hyper-parameter class) into an inert
    placeholder that only stores what it is given, recording its name. No module is imported."""
    allowed = _allowed_globals()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # protocol-2 pickles name Python 2 modules (__builtin__.eval): judge the Python 3 name
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            if (module, name) in allowed:
                return super().find_class(module, name)
            if module.split(".")[0] in _REFUSED_MODULES:
                raise pickle.UnpicklingError(
                    f"the file asks to call {module}.{name}: a checkpoint never needs that (refused, nothing was run)"
                )
            placeholders.append(f"{module}.{name}")
            return type(name, (_Placeholder,), {"__module__": module, "__qualname__": name})

    module = types.ModuleType("reclf_restricted_pickle")
    module.Unpickler = Unpickler
    module.load = pickle.load
    module.__version__ = "1"
    return module


def read_lightning_state_dict(
    path: str, trust_pickle: bool | str = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a (Lightning) checkpoint's ``state_dict`` and how the file was read.

    ``torch.load(weights_only=True)`` first: it only rebuilds tensors and plain containers. Lightning
    checkpoints also pickle hyper-parameter objects (an OmegaConf config, an ``argparse.Namespace``),
    which that refuses; unpickling them in general can run arbitrary code, so it is done only with
    ``trust_pickle``, and then by a restricted unpickler (:func:`_restricted_pickle_module`): tensor,
    numpy and container classes are rebuilt, calls into ``os``/``subprocess``/``builtins``... are
    refused, every other class becomes an inert placeholder (listed in ``placeholders``).
    """
    if not os.path.isfile(path):
        raise CheckpointConversionError(f"checkpoint {path!r} not found")
    trust = as_bool(trust_pickle, "trust_pickle")
    placeholders: list[str] = []
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        how = "torch.load(weights_only=True)"
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        refused = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line),
                       reason[0] if reason else "")
        if not trust:
            raise CheckpointConversionError(
                f"{path!r}: torch.load(weights_only=True) refused it ({refused.strip()}). Lightning checkpoints "
                "pickle Python objects beside the weights (hyper-parameters: an OmegaConf config, an "
                "argparse.Namespace), and unpickling those can execute arbitrary code. If you trust where the "
                "file comes from (e.g. the authors' release), pass --trust_pickle true"
            ) from err
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False,
                             pickle_module=_restricted_pickle_module(placeholders))
        except Exception as err2:
            raise CheckpointConversionError(
                f"{path!r}: cannot unpickle it with the restricted unpickler of --trust_pickle true: {err2}"
            ) from err2
        how = "restricted unpickler (--trust_pickle true): tensors, numpy and containers; other classes as placeholders"
    except Exception as err:
        raise CheckpointConversionError(f"{path!r} is not a PyTorch checkpoint torch.load can read: {err}") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointConversionError(f"{path!r} holds no 'state_dict' (found {keys})")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    info = {"read_with": how}
    if placeholders:
        info["placeholders"] = sorted(set(placeholders))
    return tensors, info


class _Keys:
    """Source tensors under a root prefix, remembering which were used (the rest is reported)."""

    def __init__(self, state: dict[str, torch.Tensor], root: str) -> None:
        self.root = root
        self.state = {k[len(root):]: v for k, v in state.items() if k.startswith(root)}
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.state

    def get(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise CheckpointConversionError(f"source tensor {self.root + key!r} is missing")
        self.used.add(key)
        return self.state[key]

    def take(self, prefix: str) -> dict[str, torch.Tensor]:
        sub = {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}
        self.used.update(prefix + k for k in sub)
        return sub

    def unused(self) -> dict[str, int]:
        """Unused tensors counted by module path (see :func:`_group`)."""
        return dict(sorted(Counter(_group(k) for k in self.state if k not in self.used).items()))


_PARAMETER_NAMES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked", "in_proj_weight",
                    "in_proj_bias"}


def _group(key: str) -> str:
    """A tensor's module path with layer indices collapsed (``encoder.layer.N.crossattention.self.query``);
    buffers keep their own name (``embeddings.position_ids``)."""
    module, _, leaf = key.rpartition(".")
    return re.sub(r"\.\d+(?=\.|$)", ".N", module if leaf in _PARAMETER_NAMES and module else key)


def _find_root(state: dict[str, torch.Tensor], fmt: SourceFormat, path: str) -> str:
    anchor = fmt.image_tower + "conv1.weight"
    roots = sorted({k[: -len(anchor)] for k in state if k.endswith(anchor)})
    if len(roots) == 1:
        return roots[0]
    if len(roots) > 1:
        raise CheckpointConversionError(f"{path!r}: several image towers {[r + fmt.image_tower for r in roots]}")
    for other in FORMATS.values():
        if other is not fmt and any(k.endswith(other.image_tower + "conv1.weight") for k in state):
            raise CheckpointConversionError(
                f"{path!r} looks like a {other.name} checkpoint: use convert-checkpoint {other.name}"
            )
    if any(fmt.image_tower + "blocks." in k or fmt.image_tower + "patch_embed" in k for k in state):
        raise CheckpointConversionError(
            f"{path!r}: the image encoder is a ViT; reclf encoders are ResNets (use the ResNet-50 release)"
        )
    raise CheckpointConversionError(
        f"{path!r} is not a {fmt.name} checkpoint: no key ends with {anchor!r} (keys look like {sorted(state)[:5]})"
    )


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
    from ...nets.factory import save_pretrained
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
