"""The linear probe's head: the masked loss, class scores, and the ignite workflow that trains
``nn.Linear(F, C)`` on cached, standardised features (seeded mini-batches, best-validation epoch,
the standardisation folded into the saved layer)."""

from __future__ import annotations


import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from ....metrics import classification_metrics
from ....utils import as_choice

logger = logging.getLogger("reclf")

# the DESIGN §5 metric keys a probe reports per run (plus auroc/<class>)
METRIC_KEYS = ("acc", "macro_f1", "auroc_mean")


# ---- loss, scores ---------------------------------------------------------------------------


def masked_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the *known* entries: (B, C) logits, (B, C) targets 1 / 0 / -1.

    Uncertain (-1) entries contribute neither loss nor gradient; a batch without a known entry
    gives 0.
    """
    known = targets >= 0
    loss = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).to(logits.dtype), reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def probe_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Masked BCE (multi-label, targets (B, C)) or cross-entropy (multi-class, targets (B,))."""
    if multi_label:
        return masked_bce_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """(N, C) logits → sigmoid (multi-label; decisions at 0.5) or softmax (multi-class) scores."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


# ---- features -------------------------------------------------------------------------------


# ---- the head's ignite workflow ---------------------------------------------------------------


class FeatureBatches:
    """Index mini-batches (a re-iterable ignite data source) over N cached feature rows,
    reshuffled every epoch by a private seeded generator (never the global RNG)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n = int(n)
        self.batch_size = max(1, int(batch_size))
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.randperm(self.n, generator=self.generator).split(self.batch_size))


class HeadTrainer(Engine):
    """Ignite engine: one iteration = a mini-batch of cached features → linear head → loss → step.

    Args:
        head: ``nn.Linear(F, C)``. features: (N, F) training features (standardised).
        targets: (N,) class indices or (N, C) 1 / 0 / -1. multi_label: the loss (:func:`probe_loss`).
        max_epochs, batch_size, lr, weight_decay: AdamW on the head.
        seed: the mini-batch order. handlers: objects with ``attach(engine)`` (MONAI / ignite).

    ``engine.state.output`` is ``{"loss": float}``; handlers read ``engine.head``.
    """

    def __init__(
        self, head: nn.Linear, features: torch.Tensor, targets: torch.Tensor, multi_label: bool, max_epochs: int,
        batch_size: int, lr: float, weight_decay: float = 0.0, seed: int = 0, handlers: Sequence[Any] = (),
    ) -> None:
        super().__init__(self._iteration)
        self.head = head
        self.features = features
        self.targets = targets
        self.multi_label = bool(multi_label)
        self.max_epochs = int(max_epochs)
        self.batches = FeatureBatches(len(features), batch_size, seed)
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=float(lr), weight_decay=float(weight_decay))
        for handler in handlers or ():
            handler.attach(self)

    def _iteration(self, engine: Engine, index: torch.Tensor) -> dict[str, float]:
        self.head.train()
        index = index.to(self.features.device)
        loss = probe_loss(self.head(self.features[index]), self.targets[index], self.multi_label)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def run(self) -> Any:  # type: ignore[override]
        with _few_threads(self.features.device):
            return super().run(self.batches, max_epochs=self.max_epochs)


@contextlib.contextmanager
def _few_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the head's tiny CPU ops: (B, F) @ (F, C) is far too small to split,
    and thread synchronisation made 100 epochs ~20x slower on a busy 2-core machine (measured)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class BestValidationHead:
    """Ignite handler: after every epoch, the head's validation metrics (``val_<key>`` in
    ``engine.state.metrics``); the head of the best epoch is restored when training completes.

    Model selection uses ``key_metric`` (``auto``: ``auroc_mean`` multi-label, ``acc``
    multi-class), ties broken by ``auroc_mean``, the earlier epoch kept on a full tie. Without
    validation items the last epoch is kept.

    Args:
        features: (V, F) validation features (standardised like the training ones).
        targets: (V,) or (V, C) numpy targets. class_names, multi_label: as in the datalist.
    """

    def __init__(self, features: torch.Tensor, targets: np.ndarray, class_names: Sequence[str], multi_label: bool,
                 key_metric: str = "auto") -> None:
        self.features = features
        self.targets = targets
        self.class_names = list(class_names)
        self.multi_label = bool(multi_label)
        key = as_choice(key_metric, ("auto", "auroc_mean", "acc", "macro_f1"), "key_metric")
        self.key_metric = ("auroc_mean" if self.multi_label else "acc") if key == "auto" else key
        self.best_score: tuple[float, float] | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.validate)
        engine.add_event_handler(Events.COMPLETED, self.restore)

    @torch.no_grad()
    def validate(self, engine: Engine) -> None:
        if len(self.features) == 0:
            self.best_epoch = engine.state.epoch
            return
        head = engine.head.eval()
        scores = probabilities(head(self.features), self.multi_label).cpu().numpy()
        metrics = classification_metrics(scores, self.targets, self.class_names, self.multi_label)
        engine.state.metrics.update({f"val_{k}": v for k, v in metrics.items() if k in METRIC_KEYS})

        def finite(v: float) -> float:
            return v if np.isfinite(v) else -math.inf

        score = (finite(metrics[self.key_metric]), finite(metrics["auroc_mean"]))
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self.best_metrics = score, engine.state.epoch, metrics
            self.best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}

    def restore(self, engine: Engine) -> None:
        if self.best_state is not None:
            engine.head.load_state_dict(self.best_state)
        engine.state.best_epoch = self.best_epoch


def fold_standardisation(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of the linear layer on *raw* features equal to ``head`` on standardised ones:
    ``W((x - μ)/σ) + b = (W/σ) x + (b - (W/σ) μ)``. Returns weight (C, F) and bias (C,)."""
    weight = head.weight.detach() / std
    return weight, head.bias.detach() - weight @ mean
