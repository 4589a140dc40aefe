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


# ---- classification ------------------------------------------------------------------------


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of one binary task, tie-aware (Mann-Whitney U with mid-ranks).

    Args:
        scores: (N,) real scores, higher = more positive. targets: (N,) 1 / 0; other values
            (e.g. -1 = uncertain) are ignored.

    Returns:
        AUROC in [0, 1], or NaN when the kept targets are all one class (undefined).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel()
    keep = (targets == 0) | (targets == 1)
    scores, positive = scores[keep], targets[keep] == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # mid-ranks: every member of a run of tied scores gets the mean of the run's ranks
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    mid = (starts + ends + 1) / 2.0  # 1-based mean rank of each run
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], multi_label: bool
) -> dict[str, float]:
    """``acc``, ``macro_f1``, ``auroc_mean`` and ``auroc/<class>`` (DESIGN §5 keys).

    Args:
        scores: (N, C) class scores (logits, probabilities or similarities: only their order matters,
            except that multi-label decisions threshold probabilities at 0.5, so pass probabilities).
        targets: (N,) int class indices (multi-class) or (N, C) 1 / 0 / -1 (multi-label; -1 =
            uncertain, left out of every metric of that class).
        class_names: the C names. multi_label: which of the two target forms is given.

    Multi-class: accuracy of the argmax, macro-F1 over classes, one-vs-rest AUROC per class.
    Multi-label: per-class accuracy / F1 at 0.5 (means over classes), AUROC per class. A class
    without both positives and negatives has an undefined (NaN → null) AUROC and is left out of
    ``auroc_mean``; the F1 of a class with no positives and no predicted positives is undefined too.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, c = scores.shape
    if len(class_names) != c:
        raise ValueError(f"{c} score columns but {len(class_names)} class names")
    out: dict[str, float] = {}
    if multi_label:
        targets = np.asarray(targets).reshape(n, c)
        predicted = scores >= 0.5
        accs, f1s = [], []
        for k in range(c):
            known = (targets[:, k] == 0) | (targets[:, k] == 1)
            if known.any():
                accs.append(float((predicted[known, k] == (targets[known, k] == 1)).mean()))
            f1s.append(_f1(predicted[known, k], targets[known, k] == 1))
        out["acc"] = float(np.mean(accs)) if accs else float("nan")
        columns = [(targets[:, k]) for k in range(c)]
    else:
        targets = np.asarray(targets).astype(np.int64).ravel()
        if targets.min(initial=0) < 0 or targets.max(initial=0) >= c:
            raise ValueError(f"class targets must lie in [0, {c}), got {targets.min()}..{targets.max()}")
        predicted_class = scores.argmax(1)
        out["acc"] = float((predicted_class == targets).mean()) if n else float("nan")
        f1s = [_f1(predicted_class == k, targets == k) for k in range(c)]
        columns = [(targets == k).astype(np.int64) for k in range(c)]
    defined_f1 = [f for f in f1s if np.isfinite(f)]
    out["macro_f1"] = float(np.mean(defined_f1)) if defined_f1 else float("nan")
    aucs = []
    for k, name in enumerate(class_names):
        value = auroc(scores[:, k], columns[k])
        out[f"auroc/{name}"] = value
        if np.isfinite(value):
            aucs.append(value)
    out["auroc_mean"] = float(np.mean(aucs)) if aucs else float("nan")
    out["n_samples"] = int(n)
    return out


def _f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    tp = float((predicted & actual).sum())
    denominator = float(predicted.sum() + actual.sum())
    return 2.0 * tp / denominator if denominator > 0 else float("nan")


def precision_at_k(similarity: np.ndarray, query_classes: np.ndarray, candidate_classes: np.ndarray,
                   ks: Sequence[int] = (5, 10, 100), prefix: str = "i2t") -> dict[str, float]:
    """Precision@K by class agreement (the CheXpert 5×200 retrieval protocol): for each query the
    share of its top-K candidates whose class equals the query's, averaged over queries.

    Args:
        similarity: (Q, M) query × candidate scores. query_classes: (Q,) ints; candidate_classes: (M,).
        ks: K values (K larger than M uses M). prefix: key prefix (``i2t`` / ``t2i``).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    order = np.argsort(-similarity, axis=1, kind="stable")
    agree = np.asarray(candidate_classes)[order] == np.asarray(query_classes).reshape(-1, 1)  # (Q, M)
    out = {}
    for k in ks:
        kk = min(int(k), similarity.shape[1])
        out[f"{prefix}_precision@{k}"] = float(agree[:, :kk].mean()) if kk > 0 and len(agree) else float("nan")
    return out


# ---- segmentation ----------------------------------------------------------------------------


def dice_iou(pred_mask: np.ndarray | torch.Tensor, true_mask: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks.

    Args:
        pred_mask, true_mask: (N, ...) masks of N images, same shape; nonzero / True = foreground
            (threshold probabilities before calling, e.g. at 0.5).

    Returns:
        dice (N,) = 2|P∩T| / (|P| + |T|) and iou (N,) = |P∩T| / |P∪T|, float64; an image whose
        prediction and truth are both empty scores 1 in both (nothing to find, nothing found).
    """
    pred = torch.as_tensor(pred_mask).reshape(len(pred_mask), -1) != 0
    true = torch.as_tensor(true_mask).reshape(len(true_mask), -1) != 0
    if pred.shape != true.shape:
        raise ValueError(f"dice_iou: prediction {tuple(pred.shape)} and truth {tuple(true.shape)} differ in shape")
    inter = (pred & true).sum(1, dtype=torch.float64)
    total = pred.sum(1, dtype=torch.float64) + true.sum(1, dtype=torch.float64)
    union = total - inter
    empty = total == 0
    dice = torch.where(empty, 1.0, 2.0 * inter / total.clamp(min=1))
    iou = torch.where(empty, 1.0, inter / union.clamp(min=1))
    return dice.numpy(), iou.numpy()
