"""Ignite handlers the bundle configs attach: validation, checkpoint export, progress bar."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from ..distributed import is_main_process
from .encode import retrieval_metrics
from ..utils import as_amp

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
        from ..nets.factory import save_pretrained

        if is_main_process():
            save_pretrained(self.network, self.tokenizer, self.save_dir)


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
