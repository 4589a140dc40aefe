"""Data layer: datalists, labels, image and text IO, reports, prompts, datasets and loaders, the
decoded-image cache, the demo generator (:mod:`.demo`) and the public-dataset preparers (:mod:`.prepare`).

Nothing here imports engines, tasks or tools.

``custom.data`` was a module before the package layout: its names (``PretrainDataset``,
``load_datalist``, ``image_transform``, ``make_loader``, ...) live in :mod:`.datalist`, :mod:`.transforms`, :mod:`.datasets` and :mod:`.loaders` (all
re-exported by :mod:`.datasets`) and stay
reachable here as aliases (``_target_: custom.data.PretrainDataset``), resolved on first access so
that ``import custom.data.demo`` does not pay for torch and MONAI.
"""

import importlib as _importlib

_SUBMODULES = {"datalist", "datasets", "demo", "image_cache", "io", "labels", "loaders", "prepare", "prompts", "reports",
               "segmentation", "text", "textfiles", "transforms"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # the old ``custom.data`` module's names (custom/data/datasets.py)
    datasets = _importlib.import_module(".datasets", __name__)
    try:
        return getattr(datasets, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(dir(_importlib.import_module(".datasets", __name__))))
