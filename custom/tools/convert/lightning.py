"""Reading a PyTorch Lightning ``.ckpt``: a restricted unpickler (no code runs; unknown classes
become placeholders, refused modules stop the read) and the key bookkeeping of a conversion."""

from __future__ import annotations


import os
import _compat_pickle
import pickle
import re
import types
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

from ...utils import as_bool

from .formats import CheckpointConversionError, FORMATS, SourceFormat


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
