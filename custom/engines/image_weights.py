"""Read a user's ResNet weights file and bring it into torchvision's layout, or say why not.

``image_weights`` is whatever file the user has: a torchvision ImageNet state dict
(``resnet50-0676ba61.pth``), a timm file or Hugging Face folder (``model.safetensors``), a MONAI
``ResNet`` state dict, or a full training checkpoint (PyTorch Lightning ``.ckpt``) that holds the
ResNet under some prefix. :func:`read_resnet_state_dict` finds the ResNet in it and returns a state
dict named exactly like the encoder's (torchvision's names, minus ``fc``) when the mapping is
unambiguous, and otherwise raises ``ValueError`` saying what the file holds and what is expected.
Nothing is downloaded and only tensors are unpickled (``torch.load(weights_only=True)``).

What converts:

* containers: ``state_dict`` (Lightning), ``model``, ``model_state_dict``, ``network``, ``net``,
  ``weights``, nested or not;
* a common name prefix (``module.``, ``model.encoder.``, ``img_encoder.model.`` ...), when exactly
  one prefix leads to a complete ResNet with the expected shapes;
* ``fc.*`` (the classifier: the encoder has none) is dropped, a 3-channel ``conv1`` is summed over
  RGB for a 1-channel encoder (the same as a gray image repeated on three channels), missing
  ``num_batches_tracked`` counters (old torchvision files) are set to 0.

timm's plain ResNets (``resnet50.a1_in1k``, ``resnet50.tv_in1k``) and MONAI ResNets built with
``shortcut_type='B', bias_downsample=False`` already use torchvision's names and load as they are.
What is refused, with the reason: several complete ResNets in one file (a query and a momentum
encoder), a deep stem (timm ``resnet50d``), an average-pool shortcut (timm ResNet-D), MONAI's default
bias on the downsample convolution, MONAI's ``shortcut_type='A'`` (no downsample convolution), and
another depth than the encoder's (resnet18 weights for a resnet50 encoder).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.networks.nets.resnet import ResNet

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")  # .pth.tar: the PyTorch ImageNet example's
SAFETENSORS_SUFFIX = ".safetensors"
# a Hugging Face (timm) model folder: safetensors first, as the Hub libraries prefer it
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net", "weights")
# beside "state_dict", only Lightning writes these ("epoch" alone is the PyTorch ImageNet example's too)
LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "hyper_parameters")
STEM_KEY = "conv1.weight"
FIRST_BLOCK_KEY = "layer1.0.conv1.weight"
COUNTER_SUFFIX = "num_batches_tracked"
SHOW = 4  # example keys quoted per list in a message

# (block type, blocks per stage) -> torchvision name, to say which ResNet a file holds
KNOWN_RESNETS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_BLOCK_PREFIX = re.compile(r"(?:^|\.)layer\d+\.\d+\.$")  # "layer1.0." ends a block's own conv1 key
_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
_DEEP_STEM = re.compile(r"^conv1\.\d+\.")
_AVG_DOWN = re.compile(r"^layer\d+\.\d+\.downsample\.2\.")
_DOWNSAMPLE_BIAS = re.compile(r"^layer\d+\.\d+\.downsample\.0\.bias$")
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")

Shape = tuple[int, ...]


@dataclass
class _Source:
    """What was read from the user's path, before the ResNet is looked for."""

    tensors: dict[str, torch.Tensor]
    kind: str  # e.g. "Lightning checkpoint", "safetensors file"
    architecture: str | None = None  # a Hugging Face folder's config.json "architecture"


@dataclass
class _Match:
    """The ResNet found under one candidate prefix, and what does not fit the expected layout.

    ``state`` maps the expected names to tensors (conv1 already summed over RGB); ``mismatched``
    holds ``(name, file shape, expected shape)``; ``conflicts`` are tensors named like parts of the
    ResNet (conv1, bn1, layerN) that the expected layout has no place for.
    """

    prefix: str
    stripped: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    dropped_fc: bool = False
    summed_rgb: bool = False

    @property
    def complete(self) -> bool:
        return not (self.missing or self.mismatched or self.conflicts)

    @property
    def rank(self) -> tuple[int, int]:
        """Best candidate first when sorted descending: most tensors in place, fewest problems."""
        return len(self.state) - len(self.filled), -(len(self.missing) + len(self.mismatched) + len(self.conflicts))


def read_resnet_state_dict(
    path: str, expected: Mapping[str, torch.Size | Shape]
) -> tuple[dict[str, torch.Tensor], str]:
    """Read ``path`` and return its ResNet as a state dict named and shaped like ``expected``.

    Args:
        path: a ``.pt/.pth/.bin/.ckpt/.tar`` file (read with ``torch.load(weights_only=True)``), a
            ``.safetensors`` file, or a folder holding ``model.safetensors`` / ``pytorch_model.bin``.
        expected: the encoder's ``{name: shape}``, e.g. ``{k: v.shape for k, v in
            net.state_dict().items()}``: torchvision names, ``conv1.weight`` (64, C_in, 7, 7).

    Returns:
        ``(state_dict, description)``: exactly the keys of ``expected`` (ready for
        ``load_state_dict(strict=True)``) and one line saying what was converted, to be logged.

    Raises:
        ValueError: naming ``path``, when the file cannot be read, holds no state dict, or holds no
        ResNet (or several) that maps onto ``expected`` without guessing.
    """
    shapes = {k: tuple(v) for k, v in expected.items()}
    source = _read_source(path)
    matches = [_match(source.tensors, p, shapes) for p in _candidate_prefixes(source.tensors)]
    complete = [m for m in matches if m.complete]
    if len(complete) > 1:
        raise ValueError(_ambiguous_message(path, complete))
    if not complete:
        raise ValueError(_no_match_message(path, source, matches, shapes))
    found = complete[0]
    return found.state, _describe(source, found)


# ---------------------------------------------------------------------------------------- reading
def _read_source(path: str) -> _Source:
    """Read ``path`` (file or Hugging Face folder) and unwrap it down to its ``{name: tensor}``."""
    path = os.path.expanduser(str(path))
    architecture = None
    if os.path.isdir(path):
        file, architecture = _hf_folder_file(path)
        kind = f"Hugging Face folder ({os.path.basename(file)}"
        kind += f", architecture {architecture!r})" if architecture else ")"
    elif os.path.isfile(path):
        file, kind = path, ""
    else:
        raise ValueError(f"image_weights {path!r}: no such file or folder")
    if file.endswith(SAFETENSORS_SUFFIX):
        tensors, found_kind = _read_safetensors(file, path), "safetensors file"
    elif file.endswith(TORCH_SUFFIXES):
        tensors, found_kind = _unwrap(_read_torch(file, path), path)
    else:
        raise ValueError(
            f"image_weights {path!r}: unknown file type; expected a PyTorch file "
            f"({'/'.join(TORCH_SUFFIXES)}), a {SAFETENSORS_SUFFIX} file, or a Hugging Face folder "
            f"holding one of {list(HF_WEIGHT_FILES)}"
        )
    return _Source(tensors, kind or found_kind, architecture)


def _hf_folder_file(folder: str) -> tuple[str, str | None]:
    """The weights file of a Hugging Face (timm) model folder and its config's architecture name."""
    present = [name for name in HF_WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        listing = sorted(os.listdir(folder))[:10]
        raise ValueError(
            f"image_weights {folder!r}: a folder must hold one of {list(HF_WEIGHT_FILES)} (a Hugging Face "
            f"timm model folder); found {listing}"
        )
    architecture = None
    config = os.path.join(folder, "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                architecture = json.load(f).get("architecture")
        except (OSError, ValueError, AttributeError):
            architecture = None  # only used to word messages: an unreadable config is no error
    # when both are present (timm Hub folders ship both), they hold the same weights: the
    # safetensors one is read, as the Hub libraries do
    return os.path.join(folder, present[0]), architecture if isinstance(architecture, str) else None


def _read_torch(file: str, path: str) -> Any:
    """``torch.load`` tensors only; a pickle of Python objects is refused, never executed."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message recommends weights_only=False; we only name what was found
        found = _PICKLED_GLOBAL.search(str(err))
        if found:
            raise ValueError(
                f"image_weights {path!r} holds pickled Python objects (e.g. {found.group(1)}), not only "
                f"tensors; weights are read with torch.load(weights_only=True), which loads tensors only. "
                f"Re-save the weights as a state dict: torch.save(model.state_dict(), path)"
            ) from None
        raise ValueError(
            f"image_weights {path!r} could not be read by torch.load(weights_only=True): not a torch.save "
            f"file, or a corrupted one"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"image_weights {path!r} could not be read as a PyTorch file: {err}") from None


def _read_safetensors(file: str, path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"image_weights {path!r} could not be read as a safetensors file: {err}") from None


def _unwrap(obj: Any, path: str) -> tuple[dict[str, torch.Tensor], str]:
    """Descend through checkpoint containers to the ``{name: tensor}`` mapping.

    Returns the tensors and how the file was described (``Lightning checkpoint``, ``checkpoint
    (under 'model')``, ``state dict``). Non-tensor entries of a state dict are left out.
    """
    kind, trail = "state dict", []
    if isinstance(obj, dict) and "state_dict" in obj and any(k in obj for k in LIGHTNING_KEYS):
        kind = "Lightning checkpoint"
    while isinstance(obj, dict) and not _tensors(obj):
        holders = [k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)]
        if len(holders) > 1:
            raise ValueError(
                f"image_weights {path!r}: the checkpoint holds several weight sets {holders}; it is "
                f"ambiguous which one to load: save the one you mean with torch.save(ckpt[key], path)"
            )
        if not holders:
            break
        trail.append(holders[0])
        obj = obj[holders[0]]
    tensors = _tensors(obj) if isinstance(obj, dict) else {}
    if not tensors:
        raise ValueError(f"image_weights {path!r} is not a state dict: found {_summary(obj)}; expected a "
                         f"mapping of parameter names to tensors (possibly under one of {list(CONTAINER_KEYS)})")
    if trail and kind == "state dict":
        kind = "checkpoint (under " + " / ".join(repr(k) for k in trail) + ")"
    return tensors, kind


def _tensors(obj: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _summary(obj: Any) -> str:
    """A few words on what a non-state-dict object is: its type and top-level keys or length."""
    if isinstance(obj, dict):
        if not obj:
            return "an empty dict"
        keys = [repr(k) for k in list(obj)[:8]]
        more = f" ({len(obj)} in all)" if len(obj) > 8 else ""
        return f"a dict with no tensors, keys {', '.join(keys)}{more}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


# --------------------------------------------------------------------------------------- matching
def _candidate_prefixes(tensors: Iterable[str]) -> list[str]:
    """Prefixes under which a ResNet may sit: what precedes a stem ``conv1.weight`` or a
    ``layer1.0.conv1.weight`` (the latter also finds a ResNet whose stem is not a single conv)."""
    found = set()
    for key in tensors:
        if key.endswith(FIRST_BLOCK_KEY):
            found.add(key[: -len(FIRST_BLOCK_KEY)])
        elif key.endswith(STEM_KEY) and not _BLOCK_PREFIX.search(key[: -len(STEM_KEY)]):
            found.add(key[: -len(STEM_KEY)])
    return sorted(found)


def _match(tensors: dict[str, torch.Tensor], prefix: str, expected: dict[str, Shape]) -> _Match:
    """Compare the tensors under ``prefix`` with the expected names and shapes."""
    stripped = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    m = _Match(prefix, stripped)
    for name, shape in expected.items():
        if name not in stripped:
            if name.endswith(COUNTER_SUFFIX):
                # a batch-norm step counter (absent from old torchvision files): never used in eval
                m.state[name] = torch.zeros(shape, dtype=torch.long)
                m.filled.append(name)
            else:
                m.missing.append(name)
            continue
        value = stripped[name]
        if tuple(value.shape) == shape:
            m.state[name] = value
        elif _is_rgb_stem(name, tuple(value.shape), shape):
            m.state[name] = value.sum(dim=1, keepdim=True)
            m.summed_rgb = True
        else:
            m.mismatched.append((name, tuple(value.shape), shape))
    parts = {name.split(".", 1)[0] for name in expected}
    for name in stripped:
        if name in expected or name.endswith(COUNTER_SUFFIX):
            continue
        if name.startswith("fc."):
            m.dropped_fc = True
        elif name.split(".", 1)[0] in parts:
            m.conflicts.append(name)
    return m


def _is_rgb_stem(name: str, found: Shape, shape: Shape) -> bool:
    """An RGB ``conv1`` (O, 3, k, k) for a gray encoder (O, 1, k, k): summed over the channels."""
    return name == STEM_KEY and len(found) == 4 and found[1] == 3 and shape[1:2] == (1,) \
        and found[:1] + found[2:] == shape[:1] + shape[2:]


def _architecture(names: Iterable[str]) -> str | None:
    """torchvision's name for a ResNet given its parameter names (block type and blocks per stage)."""
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for name in names:
        found = _BLOCK_KEY.match(name)
        if found:
            blocks.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
            bottleneck = bottleneck or ".conv3." in name
    if sorted(blocks) != [1, 2, 3, 4]:
        return None
    layout = ("bottleneck" if bottleneck else "basic", tuple(len(blocks[i]) for i in (1, 2, 3, 4)))
    return KNOWN_RESNETS.get(layout, f"a ResNet with {layout[0]} blocks {list(layout[1])}")


# --------------------------------------------------------------------------------------- messages
def _describe(source: _Source, m: _Match) -> str:
    """One line on what was read and converted, e.g. "Lightning checkpoint, prefix 'model.' stripped"."""
    steps = [source.kind]
    if m.prefix:
        steps.append(f"prefix {m.prefix!r} stripped")
    if m.dropped_fc:
        steps.append("fc dropped")
    if m.summed_rgb:
        steps.append("conv1 summed over RGB")
    if m.filled:
        steps.append(f"{len(m.filled)} absent num_batches_tracked set to 0")
    used = {m.prefix + k for k in m.state} | {m.prefix + k for k in m.stripped if k.startswith("fc.")}
    ignored = [k for k in source.tensors if k not in used]
    if ignored:
        steps.append(f"{len(ignored)} other tensors ignored (e.g. {_quote(ignored)})")
    if len(steps) == 1:
        steps.append("torchvision layout, loaded as is")
    return ", ".join(steps)


def _ambiguous_message(path: str, complete: list[_Match]) -> str:
    prefixes = ", ".join(repr(m.prefix) for m in complete)
    example = complete[0].prefix
    return (
        f"image_weights {path!r} holds {len(complete)} complete ResNets, under the prefixes {prefixes} "
        f"(e.g. a query and a momentum encoder); it is ambiguous which one to load. Extract the one you "
        f"mean: torch.save({{k[len(p):]: v for k, v in state.items() if k.startswith(p)}}, out) with "
        f"p = {example!r}"
    )


def _no_match_message(path: str, source: _Source, matches: list[_Match], expected: dict[str, Shape]) -> str:
    """Why no prefix gives the expected ResNet: what was found, what differs, what is expected."""
    keys = list(source.tensors)
    lines = [f"image_weights {path!r}: no ResNet in the expected torchvision layout was found.",
             f"Found: {source.kind} with {len(keys)} tensors, e.g. {_quote(keys)}."]
    if not matches:
        lines.append("No key ends with 'conv1.weight' or 'layer1.0.conv1.weight': this is not a ResNet.")
    else:
        best = max(matches, key=lambda m: m.rank)
        where = f"Under prefix {best.prefix!r}" if best.prefix else "At the top level"
        if best.missing:
            lines.append(f"{where}: {len(best.missing)} expected tensors are missing, e.g. {_quote(best.missing)}.")
        if best.mismatched:
            shown = "; ".join(f"{k}: file {list(a)}, expected {list(b)}" for k, a, b in best.mismatched[:SHOW])
            lines.append(f"{where}: {len(best.mismatched)} tensors have other shapes, e.g. {shown}.")
        if best.conflicts:
            lines.append(f"{where}: {len(best.conflicts)} tensors have no place in torchvision's layout, "
                         f"e.g. {_quote(best.conflicts)}.")
        lines.extend(_reasons(best, source, expected))
    wanted = _a(_architecture(expected) or "ResNet")
    lines.append(f"Expected: the {len(expected)} tensors of {wanted} in torchvision's names, "
                 f"e.g. {_quote(_expected_examples(expected), limit=SHOW)}; fc.* is ignored. "
                 f"Check that image_encoder matches the file's architecture (resnet18 vs resnet50).")
    return "\n".join(lines)


def _reasons(m: _Match, source: _Source, expected: dict[str, Shape]) -> list[str]:
    """Known layouts that are not torchvision's, recognised from the candidate's names."""
    names = list(m.stripped)
    reasons = []
    if source.architecture:
        reasons.append(f"The folder's config.json names the architecture {source.architecture!r}.")
    if any(_DEEP_STEM.match(k) for k in names):
        reasons.append("It has a deep stem: a deep stem (conv1.0/conv1.1...) is not the torchvision ResNet stem "
                       "(one 7x7 conv1): timm's resnet*d / resnet*c / resnet*s variants do not convert.")
    if any(_AVG_DOWN.match(k) for k in names):
        reasons.append("Its shortcut is average pooling + conv (downsample.1 conv, downsample.2 norm: timm's "
                       "ResNet-D avg_down), not torchvision's downsample.0 conv + downsample.1 norm.")
    if any(_DOWNSAMPLE_BIAS.match(k) for k in m.conflicts):
        reasons.append("It is a MONAI ResNet with a bias on the downsample convolution (MONAI's default "
                       "bias_downsample=True), which torchvision's layout has no place for; dropping the bias "
                       "would change the outputs, so the file is not converted (build the MONAI ResNet with "
                       "shortcut_type='B', bias_downsample=False, or use torchvision weights).")
    wants_downsample = any(".downsample." in k for k in expected)
    if wants_downsample and not any(".downsample." in k for k in names) and any(k.startswith("layer") for k in names):
        reasons.append("It has no downsample convolutions (MONAI's shortcut_type='A', a zero-padded identity "
                       "shortcut); torchvision's layout needs layerN.0.downsample.0 (conv) and .1 (norm).")
    found, wanted = _architecture(names), _architecture(expected)
    if found and wanted and found != wanted:
        reasons.append(f"The file holds {_a(found)} while the encoder is {_a(wanted)}: set image_encoder to match.")
    return reasons


def _expected_examples(expected: dict[str, Shape]) -> list[str]:
    """A stem, a first block, a shortcut and the last tensor of the expected names."""
    names = [k for k in expected if not k.endswith(COUNTER_SUFFIX)]
    picks = [STEM_KEY, FIRST_BLOCK_KEY, next((k for k in names if ".downsample.0." in k), None), names[-1]]
    return list(dict.fromkeys(k for k in picks if k in expected))


def _a(architecture: str) -> str:
    """ "resnet50" -> "a resnet50"; a description that already starts with "a " is kept."""
    return architecture if architecture.startswith("a ") else f"a {architecture}"


def _quote(keys: list[str], limit: int = SHOW) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" ({len(keys)} in all)" if len(keys) > limit else "")


def load_torchvision_weights(net: ResNet, path: str) -> None:
    """Load a ResNet weights file into ``net`` strictly, in torchvision's layout.

    A torchvision state dict (e.g. ``resnet50-0676ba61.pth``) loads as it is; a timm, MONAI or
    Lightning file is converted where the mapping is unambiguous (prefix stripped, ``fc.*``
    dropped, an RGB ``conv1`` summed to one channel) and otherwise refused with a ``ValueError``
    saying what the file holds: :func:`read_resnet_state_dict`.
    What was converted is logged.
    """
    expected = {k: v.shape for k, v in net.state_dict().items()}
    state, description = read_resnet_state_dict(path, expected)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:  # the reader returns exactly the expected names and shapes
        raise ValueError(f"image_weights {path!r} did not load into this ResNet: {err}") from err
    logging.getLogger("reclf").info("image_weights %s: %s", path, description)
