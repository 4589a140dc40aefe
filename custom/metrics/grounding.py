"""Grounding: how much of a word's attention falls inside the image region it names (pure
array code; the model's tensors come from :mod:`custom.engines.tasks.visualize`).

A word's share is Σ_r α_r · m_r / Σ_r α_r, with α (R,) its word→region attention and m_r the
fraction of region cell r inside the mask (attention spread evenly over a cell's pixels); the
same sum with uniform α (the mask's area fraction) is the chance level. On the demo data a
finding's own mask is recovered from the study's union mask when it can be (see
:func:`demo_finding_masks`); ``side_grounding`` measures the words "left"/"right" against the
patient's halves of the image (chance 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


# Surface words that name each demo finding (custom.demo's templates); negations only ever name
# findings a study does not have, so every occurrence in a report refers to a present finding.
FINDING_WORDS: dict[str, tuple[str, ...]] = {
    "opacity": ("opacity", "opacities", "consolidation"),
    "effusion": ("effusion", "effusions", "fluid"),
    "nodule": ("nodule", "nodular"),
    "pneumothorax": ("pneumothorax",),
    "atelectasis": ("atelectasis",),
    "cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
}


MASK_SOURCE = (
    "demo union lesion mask; a finding's own mask is the whole union when it is the study's only finding, "
    "or the union on its side of the image (patient's left = image right) when the study's lateral findings "
    "are on opposite sides; other studies are skipped (n_skipped_ambiguous)"
)


def mask_on_grid(mask: torch.Tensor | np.ndarray, grid: Sequence[int]) -> torch.Tensor:
    """Fraction of each region cell covered by ``mask``: (H, W) in [0, 1] -> (h, w) area means."""
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))
    return F.adaptive_avg_pool2d(mask[None, None], tuple(int(g) for g in grid))[0, 0]


def attention_share_in_mask(attention: torch.Tensor, mask_fraction: torch.Tensor) -> torch.Tensor:
    """Share of attention mass inside a mask: Σ_r α_r m_r / Σ_r α_r.

    Args:
        attention: (..., R) non-negative attention over R = h·w regions (row-major grid).
        mask_fraction: (R,) or (h, w): the fraction of each region inside the mask
            (:func:`mask_on_grid`); each cell's attention is spread evenly over its pixels.

    Returns:
        (...) shares in [0, 1].
    """
    m = torch.as_tensor(mask_fraction, dtype=attention.dtype).reshape(-1)
    if m.numel() != attention.shape[-1]:
        raise ValueError(f"mask has {m.numel()} grid cells, attention has {attention.shape[-1]} regions")
    return (attention * m).sum(-1) / attention.sum(-1).clamp_min(1e-12)


def demo_finding_masks(union: np.ndarray, findings: Sequence[dict[str, str]]) -> list[np.ndarray] | None:
    """Each finding's own mask from a demo study's union mask (see the module docstring).

    Args:
        union: (H, W) in [0, 1], in display orientation (patient's left on the image's right).
        findings: the item's ``findings`` (dicts with ``finding`` and ``side``).

    Returns:
        one (H, W) mask per finding, or None when the union cannot be split (or there is no finding).
    """
    if not findings:
        return None
    if len(findings) == 1:
        return [union]
    sides = [f.get("side") for f in findings]
    if not all(s in ("left", "right") for s in sides) or len(set(sides)) != len(sides):
        return None
    width = union.shape[-1]
    on_image_right = np.arange(width) >= width / 2  # the patient's left
    return [union * (on_image_right if side == "left" else ~on_image_right) for side in sides]


def finding_word_positions(words: Sequence[str], finding: str) -> list[int]:
    """Indices of the words of a report that name ``finding`` (:data:`FINDING_WORDS`)."""
    names = FINDING_WORDS.get(finding, (finding,))
    return [k for k, w in enumerate(words) if w in names]


def grounding_from_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The grounding numbers of records carrying ``attention`` and ``finding_masks`` (see module doc).

    Returns ``grounding`` (mean over pairs of the mean share of the pair's finding words),
    ``grounding_uniform`` (the same for uniform attention: the chance level), ``grounding/<finding>``
    and ``grounding_uniform/<finding>`` (mean over that finding's word occurrences), ``n_samples`` (pairs with ≥ 1 usable finding
    word), ``n_finding_words``, ``n_skipped_ambiguous``, and ``side_grounding``: the mean share of a
    'left'/'right' word's attention on that side of the patient (chance 0.5), over ``n_side_words``
    words of the same pairs (ambiguous ones included); values are None when nothing is measurable.
    """
    per_pair, per_pair_uniform, side_shares = [], [], []
    per_finding: dict[str, list[float]] = {}
    per_finding_uniform: dict[str, list[float]] = {}
    n_words, ambiguous = 0, 0
    for record in records:
        if "finding_masks" not in record or record.get("attention") is None:
            continue
        side_shares += _side_word_shares(record)
        if record.get("findings_ambiguous"):
            ambiguous += 1
            continue
        attention = torch.from_numpy(record["attention"]).double()
        shares, uniform = [], []
        for finding, mask, positions in record["finding_masks"]:
            fraction = mask_on_grid(mask, record["grid"]).double()
            if not positions or float(fraction.sum()) <= 0:  # unnamed, or a lesion too small to draw
                continue
            values = attention_share_in_mask(attention[positions], fraction).tolist()
            shares += values
            uniform += [float(fraction.mean())] * len(values)
            per_finding.setdefault(finding, []).extend(values)
            per_finding_uniform.setdefault(finding, []).extend([float(fraction.mean())] * len(values))
        if shares:
            per_pair.append(float(np.mean(shares)))
            per_pair_uniform.append(float(np.mean(uniform)))
            n_words += len(shares)

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {
        "grounding": mean(per_pair), "grounding_uniform": mean(per_pair_uniform), "n_samples": len(per_pair),
        "n_finding_words": n_words, "n_skipped_ambiguous": ambiguous,
        "side_grounding": mean(side_shares), "n_side_words": len(side_shares),
    }
    for name in sorted(per_finding):
        out[f"grounding/{name}"] = mean(per_finding[name])
        out[f"grounding_uniform/{name}"] = mean(per_finding_uniform[name])
    return out


def _side_word_shares(record: dict[str, Any]) -> list[float]:
    """Share of the attention of each 'left'/'right' word on that side of the patient
    (the patient's left is the image's right half); 0.5 is chance."""
    height, width = record["image"].shape
    on_image_right = np.broadcast_to(np.arange(width) >= width / 2, (height, width)).astype(np.float32)
    halves = {"left": mask_on_grid(on_image_right, record["grid"]), "right": mask_on_grid(1 - on_image_right, record["grid"])}
    attention = torch.from_numpy(record["attention"]).double()
    return [float(attention_share_in_mask(attention[k], halves[w])) for k, w in enumerate(record["words"]) if w in halves]
