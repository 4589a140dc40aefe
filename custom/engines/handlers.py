"""Ignite handlers the bundle configs attach: validation, checkpoint export, metrics file, progress bar."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

from ..distributed import is_main_process
from .encode import retrieval_metrics
from ..utils import as_amp, json_safe, write_json

logger = logging.getLogger("reclf")


class RetrievalValidation:
    """Ignite handler: every ``interval`` epochs, retrieval Recall@K on a validation loader,
    stored in ``engine.state.metrics`` (logged by MONAI's Stats/TensorBoard handlers)."""

    def __init__(self, loader, device, interval: int = 1, amp: bool | str = False, key_metric: str = "i2t_recall@10"):
        self.loader = loader
        self.device = device
        self.interval = max(1, int(interval))
        self.amp = as_amp(amp, "amp")
        self.key_metric = key_metric

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        metrics = retrieval_metrics(getattr(engine, "network"), self.loader, self.device, self.amp)
        engine.state.metrics.update({f"val_{k}": v for k, v in metrics.items() if "recall" in k})
        if is_main_process():
            summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "recall@" in k)
            logger.info("epoch %d validation (%d pairs): %s", engine.state.epoch, metrics["n_samples"], summary)


class ExportPretrained:
    """Ignite handler: write the self-describing checkpoint (``model.pt`` + ``model.json`` + ``text/``)
    at every epoch end and at completion (rank 0 only)."""

    def __init__(self, network, tokenizer, save_dir: str) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.save_dir = save_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from .pretrained import save_pretrained

        if is_main_process():
            save_pretrained(self.network, self.tokenizer, self.save_dir)


class MetricsWriter:
    """Ignite handler: when an evaluation run completes, its scalar ``engine.state.metrics`` (a dict
    metric contributes its items), then ``extra``, then the ``meta_keys`` of ``meta`` (a checkpoint's
    ``model.json``) as one flat JSON file, ``output`` (rank 0, atomic; NaN → null), logged and printed.

    The one writer of the evaluate configs' ``metrics.json``.
    """

    def __init__(self, output: str, extra: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
                 meta_keys: Sequence[str] = ()) -> None:
        self.output = output
        self.extra = dict(extra or {})
        self.meta, self.meta_keys = dict(meta or {}), list(meta_keys)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def metrics(self, engine: Engine) -> dict[str, Any]:
        # scalars only: a dict metric's items are in engine.state.metrics already (ignite flattens them)
        scalars = {name: value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
                   for name, value in engine.state.metrics.items()}
        out = {k: v for k, v in scalars.items() if v is None or isinstance(v, (int, float)) and not isinstance(v, bool)}
        return json_safe({**out, **self.extra, **{k: self.meta.get(k) for k in self.meta_keys}})  # NaN -> null

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        metrics = self.metrics(engine)
        write_json(metrics, self.output)
        logger.info("wrote %s: %s", self.output, json.dumps(metrics))
        print(json.dumps(metrics, indent=2), flush=True)


class LossHistory:
    """Ignite handler: the epoch means of the iteration losses, in ``engine.state.metrics``
    (``train_<name>``, logged by MONAI's Stats/TensorBoard handlers) and appended to a JSON file
    (rank 0; rewritten atomically each epoch): the loss curve of a run, readable without
    TensorBoard.

    Args:
        path: the JSON file (``{"epochs": [{"epoch", "loss", "loss_global", ...}, ...]}``); a
            resumed run keeps the entries of the epochs before its start.
        keys: the iteration outputs to average.
    """

    def __init__(self, path: str, keys: tuple[str, ...] = ("loss", "loss_global", "loss_local")) -> None:
        self.path = path
        self.keys = tuple(keys)
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def _accumulate(self, engine: Engine) -> None:
        output = engine.state.output or {}
        for key in self.keys:
            if key in output:
                self._sums[key] = self._sums.get(key, 0.0) + float(output[key])
        self._count += 1

    def _write(self, engine: Engine) -> None:
        import json
        import os

        from ..utils import atomic_write_text

        means = {k: v / max(1, self._count) for k, v in self._sums.items()}
        engine.state.metrics.update({f"train_{k}": v for k, v in means.items()})
        if not is_main_process():
            return
        history: list[dict] = []
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                history = [e for e in json.load(f).get("epochs", []) if e.get("epoch", 0) < engine.state.epoch]
        history.append({"epoch": engine.state.epoch, "iterations": self._count, **means})
        atomic_write_text(json.dumps({"epochs": history}, indent=1) + "\n", self.path)


class ProgressBar:
    """tqdm progress bar over iterations showing the running losses (ignite's ProgressBar)."""

    def __init__(self, keys: tuple[str, ...] = ("loss", "loss_global", "loss_local"), persist: bool = True) -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        self.bar = IgniteProgressBar(persist=persist)
        self.keys = tuple(keys)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=lambda out: {k: out[k] for k in self.keys if k in out})
