"""Shared by the benchmark studies (:mod:`benchmarks.ablation`, :mod:`benchmarks.evidence`):
mean / sample std / n of per-seed values, markdown cells and tables, and the cached JSON files."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing / not a finite number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def aggregate(values: Sequence[Any]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof = 1) of the finite ``values``.

    Returns ``{"mean", "std", "n", "values"}``; ``mean`` is None without finite values and ``std``
    None with fewer than two (one seed gives no spread). ``values`` keeps the inputs (None for
    missing) in seed order.
    """
    kept = [_finite(v) for v in values]
    finite = [v for v in kept if v is not None]
    n = len(finite)
    mean = sum(finite) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": kept}


def format_cell(agg: Mapping[str, Any], digits: int = 3) -> str:
    """``0.812 ± 0.010`` (``0.812`` with one value, ``—`` with none)."""
    if agg.get("mean") is None:
        return "—"
    text = f"{agg['mean']:.{digits}f}"
    return text if agg.get("std") is None else f"{text} ± {agg['std']:.{digits}f}"


BOOKKEEPING = {"n", "n_samples", "n_train", "n_pos", "n_classes", "n_phrases", "n_precision_queries", "n_reports",
               "n_single_class", "n_unique_reports", "label_seed", "checkpoint_label_seed", "label_fraction",
               "best_epoch", "image_size", "threshold"}
"""Last key parts that are counts or settings, not results: left out of the summary (the cache has them)."""


def is_result_key(key: str) -> bool:
    """A metric worth aggregating: not bookkeeping (:data:`BOOKKEEPING`) and not one of the linear
    probe's per-label-seed copies (``lp10/seed0/acc``; the run's seed is the label seed)."""
    parts = key.split("/")
    return parts[-1] not in BOOKKEEPING and not any(p.startswith("seed") and p[4:].isdigit() for p in parts)


def summarise(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{arm: [per-seed flat metrics]} -> {arm: {metric: aggregate}} over every result metric
    (:func:`is_result_key`) any seed has."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for arm, per_seed in runs.items():
        keys = sorted({k for metrics in per_seed for k, v in metrics.items()
                       if _finite(v) is not None and is_result_key(k)})
        out[arm] = {k: aggregate([metrics.get(k) for metrics in per_seed]) for k in keys}
    return out


def markdown_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], columns: Sequence[tuple[str, str]],
                   digits: int = 3, labels: Mapping[str, str] | None = None) -> str:
    """One row per arm, one column per metric; the best mean of each metric column in bold
    (time columns excepted)."""
    best: dict[str, float] = {}
    for key, _ in columns:
        if key.startswith("time/"):
            continue
        means = [summary[arm][key]["mean"] for arm in summary if key in summary[arm] and summary[arm][key]["mean"] is not None]
        if means:
            best[key] = max(means)
    lines = ["| arm | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for arm, metrics in summary.items():
        cells = []
        for key, _ in columns:
            agg = metrics.get(key, {"mean": None})
            cell = format_cell(agg, 1 if key.startswith("time/") else digits)
            if key in best and agg.get("mean") is not None and agg["mean"] == best[key]:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {(labels or {}).get(arm, arm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_json(obj: Any, path: str) -> None:
    """Atomic JSON write (NaN -> null)."""
    from custom.metrics import nan_to_none
    from custom.utils import atomic_write_text

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_text(json.dumps(nan_to_none(obj), indent=1, sort_keys=False) + "\n", path)


def _rounded(obj: Any, digits: int = 4) -> Any:
    """``obj`` with every float rounded to ``digits`` decimals (nested dicts / lists)."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
