"""reclf: medical vision-language pretraining with inter-matching relation modelling.

Components here are named by ``_target_`` from the MONAI bundles under ``bundles/``.
"""

__version__ = "0.1.0"

import importlib as _importlib

_SUBMODULES = {
    "data", "demo", "distributed", "engine", "evaluation", "handlers", "io", "losses", "metrics", "nets",
    "optim", "text", "utils", "datasets", "reports", "downstream", "classify", "convert", "zero_shot",
    "cls_retrieval", "prompts", "linear_probe", "segmentation", "visualize", "export", "accumulation",
    "checkpoints", "inference", "textfiles", "errors", "config_check", "labels",
}


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
