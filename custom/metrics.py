"""Retrieval metrics with duplicate-aware pair identity (identical reports are the same text)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def retrieval_recall(
    similarity: torch.Tensor, report_keys: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image→text and text→image Recall@K.

    Candidates for image→text are the *unique* normalised reports; a hit is the image's own report
    within the top K. Text→image queries are the unique reports; a hit is any image whose report
    is that text within the top K. Ties count in the query's favour.

    Args:
        similarity: (N, N) image × report scores of N pairs (pair n = image n, report n).
        report_keys: (N,) integer keys of the normalised reports (:func:`custom.text.report_key`).
        ks: the K values.

    Returns:
        ``i2t_recall@K``, ``t2i_recall@K`` for each K, ``n_samples`` and ``n_unique_reports``.
    """
    keys = report_keys.cpu()
    uniq, first, inverse = _unique_first(keys)
    sim_unique = similarity[:, first].float().cpu()  # (N, U): the columns of distinct reports
    own = sim_unique.gather(1, inverse.view(-1, 1))  # (N, 1)
    i2t_rank = (sim_unique > own).sum(1)  # number of distinct reports ranked above the own one
    positive = inverse.view(1, -1) == torch.arange(len(uniq)).view(-1, 1)  # (U, N)
    t2i = sim_unique.t()  # (U, N)
    best_pos = t2i.masked_fill(~positive, float("-inf")).max(1, keepdim=True).values
    t2i_rank = ((t2i > best_pos) & ~positive).sum(1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_recall@{k}"] = float((i2t_rank < k).float().mean())
        out[f"t2i_recall@{k}"] = float((t2i_rank < k).float().mean())
    out["n_samples"] = int(similarity.shape[0])
    out["n_unique_reports"] = int(len(uniq))
    return out


def _unique_first(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique keys, the index of each one's first occurrence, and each item's unique index."""
    uniq, inverse = torch.unique(keys, return_inverse=True)
    n = keys.shape[0]
    first = torch.full((len(uniq),), n, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
    return uniq, first, inverse


def nan_to_none(metrics: dict) -> dict:
    """JSON-safe metrics: an undefined value is ``null``, never NaN (DESIGN §5)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (float, np.floating)) and not np.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out
