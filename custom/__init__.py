"""reclf: medical vision-language pretraining with inter-matching relation modelling.

Components here are named by ``_target_`` from the MONAI bundles under ``bundles/``.

The package is layered; its folders are the architecture (imports only go downwards, checked
by ``tests/test_layers.py``)::

    core      utils, errors, config_check, distributed      (no reclf imports)
    bottom    data/      datalists, labels, image/text IO, reports, prompts, datasets, demo/, prepare/
              nets/      networks (constructors take values, never paths)
              losses/    pretraining objectives
              metrics/   pure array metrics
    engines/  pretrain trainer, accumulation, optim, handlers, checkpoints (the one model.pt /
              model.json reader and writer), encode (the one embedding loop), tasks/ (one module
              per downstream task; tasks never import each other)
    tools/    export/, convert/ and the command line (``python -m custom``)

**Old names are aliases.** Before the layout above every module sat flat under ``custom/``;
configs, exported bundles and users' code name them (``_target_: custom.engine.PretrainTrainer``,
``$from custom import segmentation``, ``custom.handlers.RetrievalValidation``,
``custom.datasets.covid_notes``). :data:`ALIASES` maps each old module name to its new home, and a
meta-path finder installed here makes ``import custom.<old>`` (and ``custom.<old>.<sub>``) return
the *same module object* as the new name, so classes, monkeypatching and pickles agree whichever
name is used. ``custom.data``, ``custom.losses`` and ``custom.metrics`` kept their names (they are
packages now, which expose the old module's names).
"""

__version__ = "0.1.0"

import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys

# old module name -> new module name (prefix match: custom.datasets.chexpert -> custom.data.prepare.chexpert)
ALIASES = {
    "custom.demo": "custom.data.demo",
    "custom.io": "custom.data.io",
    "custom.text": "custom.data.text",
    "custom.reports": "custom.data.reports",
    "custom.prompts": "custom.data.prompts",
    "custom.textfiles": "custom.data.textfiles",
    "custom.labels": "custom.data.labels",
    "custom.image_cache": "custom.data.image_cache",
    "custom.datasets": "custom.data.prepare",
    "custom.engine": "custom.engines.pretrain",
    "custom.accumulation": "custom.engines.accumulation",
    "custom.optim": "custom.engines.optim",
    "custom.handlers": "custom.engines.handlers",
    "custom.checkpoints": "custom.engines.checkpoints",
    "custom.downstream": "custom.engines.encode",
    "custom.inference": "custom.engines.inference",
    "custom.classify": "custom.engines.tasks.classify",
    "custom.zero_shot": "custom.engines.tasks.zero_shot",
    "custom.cls_retrieval": "custom.engines.tasks.cls_retrieval",
    "custom.linear_probe": "custom.engines.tasks.linear_probe",
    "custom.segmentation": "custom.engines.tasks.segmentation",
    "custom.evaluation": "custom.engines.tasks.evaluation",
    "custom.visualize": "custom.engines.tasks.visualize",
    "custom.export": "custom.tools.export",
    "custom.convert": "custom.tools.convert",
}

# names ``$from custom import NAME`` resolves lazily (MONAI resolves it with getattr)
_SUBMODULES = {
    "data", "nets", "losses", "metrics", "engines", "tools", "utils", "errors", "config_check", "distributed",
    *(old.split(".", 1)[1] for old in ALIASES),
}


def alias_target(name: str) -> str | None:
    """The new module name of an old dotted module name, or None when ``name`` is not an alias."""
    for old in sorted(ALIASES, key=len, reverse=True):
        if name == old or name.startswith(old + "."):
            return ALIASES[old] + name[len(old):]
    return None


class _AliasFinder(_abc.MetaPathFinder, _abc.Loader):
    """Imports an old module name as the new module itself (one module object under two names)."""

    def __init__(self) -> None:
        self._own_specs: dict[str, object] = {}

    def find_spec(self, fullname, path=None, target=None):
        new = alias_target(fullname)
        if new is None:
            return None
        try:
            exists = _util.find_spec(new) is not None
        except ImportError:
            exists = False
        if not exists:
            # no such module under the new name either: let the import fail for *this* name, as
            # locate() (MONAI's _target_) expects before it falls back to an attribute
            # (custom.linear_probe.LinearProbe: the package custom.linear_probe, attribute LinearProbe)
            return None
        return _util.spec_from_loader(fullname, self, origin=f"alias of {new}")

    def create_module(self, spec):
        module = _importlib.import_module(alias_target(spec.name))
        # the import system sets module.__spec__ to the alias's spec next: keep the real one to restore
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the module is already executed under its real name; only undo the __spec__ overwrite
        alias = module.__spec__.name
        module.__spec__ = self._own_specs.pop(alias, module.__spec__)


if not any(isinstance(f, _AliasFinder) for f in _sys.meta_path):
    # first, so that an alias never reaches the path finder (which would load a second copy)
    _sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name: str):
    """Import submodules on first attribute access, so ``$from custom import data`` works in
    bundle configs (MONAI resolves it with getattr) while ``import custom`` stays light."""
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _install_error_hook() -> None:
    # a bundle run's uncaught error ends with the project's own message (custom/errors.py)
    from .errors import install_excepthook

    install_excepthook()


_install_error_hook()
