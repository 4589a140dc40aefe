"""Contrastive objectives: one class per term, combined by :class:`PretrainLoss`.

Identical normalised reports in a batch (normal studies repeat) are all positives of each other
(multi-positive soft targets) in the global and the all-pairs local terms.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import gather_with_grad


def multi_positive_targets(row_keys: torch.Tensor, col_keys: torch.Tensor) -> torch.Tensor:
    """(N,), (M,) integer report keys -> (N, M) targets, each row uniform over its equal keys."""
    same = (row_keys.view(-1, 1) == col_keys.view(1, -1)).float()
    return same / same.sum(dim=1, keepdim=True).clamp_min(1.0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ_j t_ij log softmax_j(logits_ij)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


class GlobalContrastiveLoss(nn.Module):
    """Symmetric InfoNCE on the global embeddings, features gathered across ranks.

    Each rank scores its own images against all gathered reports and its own reports against all
    gathered images; the gather's backward sums every rank's gradient w.r.t. this rank's features
    (:func:`custom.distributed.gather_with_grad`), so with DDP's gradient averaging a step equals
    the single-process step on the concatenated batch. The local term stays per rank.

    Args:
        image_to_text_weight: λ of L = λ·L(image→text) + (1−λ)·L(text→image); 0.5 is the
            symmetric InfoNCE, ConVIRT uses 0.75.
    """

    def __init__(self, image_to_text_weight: float = 0.5) -> None:
        super().__init__()
        self.image_to_text_weight = float(image_to_text_weight)
        if not 0.0 <= self.image_to_text_weight <= 1.0:
            raise ValueError(f"image_to_text_weight: expected a number in [0, 1], got {image_to_text_weight}")

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, report_ids: torch.Tensor
    ) -> torch.Tensor:
        """image, text (B, D) L2-normalised; scale scalar; report_ids (B,) -> scalar loss."""
        all_image, all_text = gather_with_grad(image), gather_with_grad(text)
        targets = multi_positive_targets(report_ids, gather_with_grad(report_ids))
        i2t = soft_cross_entropy(scale * image @ all_text.t(), targets)
        t2i = soft_cross_entropy(scale * text @ all_image.t(), targets)
        return self.image_to_text_weight * i2t + (1.0 - self.image_to_text_weight) * t2i


class LocalContrastiveLoss(nn.Module):
    """Symmetric InfoNCE on local similarities (per rank).

    ``all`` negatives: the model's ``local_logits`` (B, B), multi-positive targets. ``topk``:
    cross-entropy over the positive (column 0) and the valid hard negatives of each row/column.
    """

    def forward(self, outputs: dict[str, torch.Tensor], report_ids: torch.Tensor) -> torch.Tensor:
        if "local_logits" in outputs:
            logits = outputs["local_logits"]
            targets = multi_positive_targets(report_ids, report_ids)
            return 0.5 * (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.t(), targets))
        losses = []
        for side in ("row", "col"):
            logits = outputs[f"local_{side}_logits"].float().masked_fill(~outputs[f"local_{side}_valid"], float("-inf"))
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            losses.append(F.cross_entropy(logits, target))
        return 0.5 * (losses[0] + losses[1])


class PretrainLoss(nn.Module):
    """L = λ_g · global InfoNCE + λ_l · local InfoNCE (the local term only where the model has one).

    Args:
        global_weight: λ_g. local_weight: λ_l.
        image_to_text_weight: the global term's weight of its image→text direction (0.5: symmetric).

    Returns a dict: ``loss`` (to back-propagate), ``loss_global``, ``loss_local`` (detached).
    """

    def __init__(self, global_weight: float = 1.0, local_weight: float = 1.0, image_to_text_weight: float = 0.5) -> None:
        super().__init__()
        self.global_weight = float(global_weight)
        self.local_weight = float(local_weight)
        self.global_loss = GlobalContrastiveLoss(image_to_text_weight)
        self.local_loss = LocalContrastiveLoss()

    def forward(self, outputs: dict[str, torch.Tensor], report_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        loss_global = self.global_loss(
            outputs["image_global"], outputs["text_global"], outputs["global_scale"], report_ids
        )
        total = self.global_weight * loss_global
        result = {"loss_global": loss_global.detach()}
        if "local_logits" in outputs or "local_row_logits" in outputs:
            loss_local = self.local_loss(outputs, report_ids)
            total = total + self.local_weight * loss_local
            result["loss_local"] = loss_local.detach()
        result["loss"] = total
        return result
