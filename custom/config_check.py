"""Refuse top-level config keys that nothing uses: ``--epoch 3`` (for ``epochs``) or
``--batchsize 2`` must not run a default-sized job that exits 0.

``monai.bundle run`` merges command-line overrides into the config as top-level keys, so a
misspelt key becomes a key that no item references. :func:`check_config_keys`, the first item
of every bundle config's ``initialize``, finds those and raises with the nearest known key. The
config it checks is the one the running MONAI workflow parsed (found on the call stack: MONAI
gives expressions no handle on their parser).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

# ids a workflow or an outside tool (MONAI Label, ckpt_export, the model zoo) reads by name
ENTRY_POINTS = frozenset({
    "imports", "initialize", "run", "finalize", "_meta_", "bundle_root", "network_def", "network", "preprocessing",
    "postprocessing", "inferer", "dataset_dir", "device", "evaluator", "trainer", "train", "validate",
})
# DESIGN §5's vocabulary (bundles/common.yaml documents it): one command line works across bundles,
# so a vocabulary key a config does not use is accepted without effect instead of refused. Configs
# no longer carry unused vocabulary keys ("unused here" padding); this is the one exemption left.
SHARED_KEYS = frozenset({
    "dataset_dir", "datalist", "output_dir", "ckpt", "pretrained_ckpt", "eval_split", "epochs", "batch_size", "lr",
    "image_size", "device", "amp", "seed", "num_workers",
})
_REF = re.compile(r"[@%]([A-Za-z_][A-Za-z0-9_]*)")


class ConfigKeyError(ValueError):
    """A top-level config key (usually a command-line override) that no config item uses."""


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def unused_keys(config: Mapping[str, Any]) -> list[str]:
    """Top-level keys that no item references (``@key`` / ``%key``) and that are neither an entry
    point nor a shared vocabulary key."""
    referenced = {m for s in _strings(config) for m in _REF.findall(s)}
    return [k for k in config if k not in referenced and k not in ENTRY_POINTS and k not in SHARED_KEYS
            and not str(k).startswith("_")]


# names other trainers use for our keys (spelling distance alone would map learning_rate to
# learn_scales); consulted first, when the synonym's key exists in the config at hand
SYNONYMS = {
    "learning_rate": "lr", "lr_rate": "lr", "bs": "batch_size", "batch": "batch_size",
    "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs", "workers": "num_workers",
    "img_size": "image_size", "resolution": "image_size", "checkpoint": "ckpt", "output": "output_dir",
}


def nearest(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` was most likely meant to be (a synonym, else the closest spelling)."""
    known = sorted(set(known))
    lowered = key.lower().replace("-", "_")
    if SYNONYMS.get(lowered) in known:
        return SYNONYMS[lowered]
    if lowered != key and lowered in known:
        return lowered
    match = difflib.get_close_matches(lowered, known, n=1, cutoff=0.6)
    return match[0] if match else None


def check_keys(config: Mapping[str, Any], accept: Iterable[str] = ()) -> None:
    """Raise :class:`ConfigKeyError` naming every unused top-level key (other than ``accept``)
    and its nearest known key."""
    accept = set(accept)
    unused = [k for k in unused_keys(config) if k not in accept]
    if not unused:
        return
    # the vocabulary counts as known even where a config does not define it: `--epoch` names `epochs`
    known = [k for k in config if k not in unused] + sorted(SHARED_KEYS)
    parts = []
    for key in unused:
        guess = nearest(key, known)
        parts.append(f"{key!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
    raise ConfigKeyError(
        f"unknown config key(s) {', '.join(parts)}: no item of this bundle config uses them, so the run would "
        "ignore them. Fix the spelling of the --key on the command line (keys are listed in the config and the README)"
    )


def _active_config() -> Mapping[str, Any] | None:
    """The raw config of the MONAI workflow/parser evaluating the current expression."""
    from monai.bundle import ConfigParser

    for frame_info in inspect.stack(context=0):
        owner = frame_info.frame.f_locals.get("self")
        # vars(), not getattr: MONAI workflows resolve unknown attributes as config ids
        parser = vars(owner).get("parser") if hasattr(owner, "__dict__") else None
        for candidate in (parser, owner):
            if isinstance(candidate, ConfigParser):
                return candidate.get()
    return None


def _own_keys() -> set[str] | None:
    """Top-level keys the config *files* of the running ``monai.bundle run`` define (read again
    from the ``config_file`` of MONAI's ``create_workflow`` frame); None if not found."""
    from monai.bundle import ConfigParser

    for frame_info in inspect.stack(context=0):
        if frame_info.function != "create_workflow":
            continue
        files = frame_info.frame.f_locals.get("config_file")
        if files is None:
            return None
        try:
            return set(ConfigParser.load_config_files(files))
        except Exception:  # unreadable here means MONAI already read it: fall back to the strict check
            return None
    return None


def check_config_keys() -> None:
    """``initialize`` item of every bundle config: refuse unused top-level keys (see module doc).

    A key the config files define themselves is not refused even when nothing uses it any more:
    an outside tool may have overridden the nested item that used it (MONAI Label replaces
    ``train#dataset#data``, so ``train_items`` goes unused). What is refused is a key that came
    from outside the files, a command-line ``--key``, and that nothing reads.
    """
    config = _active_config()
    if config is None:
        raise RuntimeError("check_config_keys: no MONAI config parser on the call stack (call it from a bundle config)")
    own = _own_keys()
    check_keys(config) if own is None else check_keys(config, accept=own)
