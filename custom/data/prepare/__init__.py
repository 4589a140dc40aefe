"""``python -m custom prepare DATASET --root DIR --out FILE``: a datalist (DESIGN §4) from each
public chest X-ray dataset's own layout. One module per dataset; :mod:`.common` holds the
checks, patient-grouped splits and the summary they share.

Every preparer takes ``root`` and ``out`` plus the shared options ``seed``, ``val_frac``,
``test_frac``, ``on_error`` (``error`` | ``skip``), ``dedup``, ``verify`` and its own; its
docstring shows the expected file tree (``python -m custom prepare DATASET --help``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .common import PrepareError, Record

# dataset name → (module, function)
REGISTRY: dict[str, tuple[str, str]] = {
    "mimic_cxr": ("mimic_cxr", "prepare_mimic_cxr"),
    "chexpert": ("chexpert", "prepare_chexpert"),
    "chexpert_5x200": ("chexpert", "prepare_chexpert_5x200"),
    "rsna_pneumonia": ("rsna_pneumonia", "prepare_rsna_pneumonia"),
    "siim_acr": ("siim_acr", "prepare_siim_acr"),
    "covidx": ("covidx", "prepare_covidx"),
    "nih_cxr14": ("nih_cxr14", "prepare_nih_cxr14"),
    "iu_xray": ("iu_xray", "prepare_iu_xray"),
    "covid_notes": ("covid_notes", "prepare_covid_notes"),
    "demo": ("demo_data", "prepare_demo"),
}

__all__ = ["REGISTRY", "PrepareError", "Record", "preparer", "preparers"]


def preparer(name: str) -> Callable[..., dict]:
    """The ``prepare`` function of dataset ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(REGISTRY)}")
    module, function = REGISTRY[name]
    return getattr(importlib.import_module(f".{module}", __name__), function)


def preparers() -> dict[str, Callable[..., dict]]:
    """All preparers, by dataset name (the ``prepare`` command group)."""
    return {name: preparer(name) for name in REGISTRY}
