"""The pretraining workflow on pytorch-ignite: one iteration = forward, loss, backward, step.

:class:`PretrainTrainer` is an ignite ``Engine`` (MONAI-workflow-like: it owns its loader and
``max_epochs`` and attaches the handlers a bundle config lists). It also owns exact resumption:
its full training state is saved atomically at every epoch end and restored on ``resume``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from .accumulation import accumulated_backward
from ..distributed import is_main_process
from ..nets.factory import unwrap
from ..utils import amp_dtype, as_amp, as_bool, as_float, as_int, atomic_torch_save, autocast, epoch_seed, seed_everything

TRAIN_STATE = "train_state.pt"
logger = logging.getLogger("reclf")


def _set_epoch(loader: torch.utils.data.DataLoader, epoch: int) -> None:
    """Make data order and augmentation a function of the epoch only (exact resume)."""
    for obj in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def current_learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr`` (the heads', or the first group's) and ``lr_<part>`` of each part's groups."""
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        part = str(group.get("name", "")).split("/")[0]
        if part and f"lr_{part}" not in rates:
            rates[f"lr_{part}"] = float(group["lr"])
    rates["lr"] = rates.get("lr_heads", float(optimizer.param_groups[0]["lr"]))
    return rates


def channels_last_tower(network: torch.nn.Module, enabled: bool | str = True) -> torch.nn.Module:
    """Put the image tower's parameters in channels_last memory format (NHWC), in place.

    Convolutions with cuDNN tensor cores (and oneDNN on CPU) run faster on NHWC; the text tower
    and the heads are not convolutional and stay as they are. Call it before wrapping the
    network in DDP (multi_gpu_train.yaml does), so that DDP's gradient buckets see the final
    strides; calling it again is a no-op. Returns ``network``.
    """
    if as_bool(enabled, "channels_last"):
        tower = getattr(unwrap(network), "image_encoder", None)
        if tower is None:
            raise ValueError("channels_last: the network has no image_encoder to convert")
        tower.to(memory_format=torch.channels_last)
    return network


class PretrainTrainer(Engine):
    """Ignite trainer for the contrastive pretraining objectives.

    Args:
        device: torch device (or string). max_epochs: total epochs.
        train_data_loader: batches from :class:`custom.data.PretrainDataset`.
        network: the (possibly DDP-wrapped) :class:`custom.nets.reclf.RECLFModel`.
        optimizer, loss_function (:class:`custom.losses.PretrainLoss`), lr_scheduler (per iteration).
        amp: mixed precision: ``false`` | ``true`` (fp16 + GradScaler on CUDA, bf16 on CPU) |
            ``fp16`` (CUDA only, with a GradScaler) | ``bf16`` (autocast, no scaler needed).
        channels_last: image tower and input images in channels_last (NHWC) memory format.
        train_handlers: objects with ``attach(engine)`` (MONAI / ignite handlers).
        checkpoint_dir: where ``train_state.pt`` is written each epoch (rank 0).
        resume: continue from ``checkpoint_dir/train_state.pt`` (model, optimizer, scheduler, scaler,
            epoch); the data order and RNG are functions of (seed, epoch), so the result equals an
            uninterrupted run.
        seed: run seed. grad_clip: max gradient norm (0 = off).
        grad_accumulation: split each loader batch into this many micro-batches for memory; the
            loss still spans the whole batch (:mod:`custom.accumulation`), so the loader's batch
            of ``batch_size × grad_accumulation`` pairs trains as one contrastive batch.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: torch.utils.data.DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: torch.nn.Module,
        lr_scheduler: Any = None,
        amp: bool | str = False,
        train_handlers: Sequence[Any] = (),
        checkpoint_dir: str | None = None,
        resume: bool | str = False,
        seed: int = 0,
        grad_clip: float = 0.0,
        grad_accumulation: int = 1,
        channels_last: bool | str = False,
    ) -> None:
        super().__init__(self._iteration)
        self.device = torch.device(device)
        self.max_epochs = as_int(max_epochs, "epochs", minimum=1)
        self.data_loader = train_data_loader
        self.network = network
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.lr_scheduler = lr_scheduler
        self.amp = as_amp(amp, "amp")
        self.amp_dtype = amp_dtype(self.amp, self.device)  # None: full precision; raises on fp16 + CPU
        # loss scaling is for fp16's narrow exponent range only; bf16 has fp32's
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.channels_last = as_bool(channels_last, "channels_last")
        channels_last_tower(self.network, self.channels_last)
        self.checkpoint_dir = checkpoint_dir
        self.resume = as_bool(resume, "resume")
        self.seed = as_int(seed, "seed")
        self.grad_clip = as_float(grad_clip, "grad_clip", minimum=0.0)
        self.grad_accumulation = as_int(grad_accumulation, "grad_accumulation", minimum=1)
        self.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._save_train_state)
        for handler in train_handlers or ():
            handler.attach(self)

    # ---- one iteration --------------------------------------------------------------------
    def _iteration(self, engine: Engine, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.network.train()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.channels_last:  # an NCHW input would make the first convolution convert back
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)

        def check(loss: torch.Tensor) -> None:
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                    "lower lr or disable amp; the last good state is in train_state.pt"
                )

        size = batch["image"].shape[0]
        if self.grad_accumulation > 1 and size > 1:
            micro = -(-size // self.grad_accumulation)
            losses = accumulated_backward(self.network, batch, micro, self.loss_function, self.device, self.amp,
                                          scale_loss=self.scaler.scale, check_loss=check)
        else:
            with autocast(self.device, self.amp):
                outputs = self.network(
                    batch["image"], batch["input_ids"], batch["attention_mask"], batch["word_ids"], batch["report_id"]
                )
            losses = self.loss_function(outputs, batch["report_id"])
            check(losses["loss"])
            self.scaler.scale(losses["loss"]).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(current_learning_rates(self.optimizer))
        return out

    # ---- epochs, state, resume --------------------------------------------------------------
    def _on_epoch_started(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        _set_epoch(self.data_loader, epoch)
        # dropout etc. draw from the global RNG: reseed per epoch so a resumed epoch replays
        seed_everything(epoch_seed(self.seed, epoch))

    def state_path(self) -> str | None:
        return os.path.join(self.checkpoint_dir, TRAIN_STATE) if self.checkpoint_dir else None

    def _save_train_state(self, engine: Engine) -> None:
        path = self.state_path()
        if path is None or not is_main_process():
            return
        atomic_torch_save(
            {
                "epoch": engine.state.epoch,
                "epoch_length": engine.state.epoch_length,
                "network": unwrap(self.network).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "scaler": self.scaler.state_dict(),
                "seed": self.seed,
            },
            path,
        )

    def _load_train_state(self) -> None:
        path = self.state_path()
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"resume: no training state at {path!r}; run without --resume first")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            if not isinstance(state, dict) or not {"epoch", "network", "optimizer"} <= set(state):
                raise KeyError("not a dict with epoch / network / optimizer")
        except Exception as err:
            raise ValueError(
                f"resume: {path!r} is not a training state (an empty, truncated or foreign file: "
                f"{type(err).__name__}); delete it and run without --resume"
            ) from None
        if state["epoch"] > self.max_epochs:
            raise ValueError(f"resume: {path!r} is at epoch {state['epoch']} > epochs={self.max_epochs}")
        if state["epoch_length"] != len(self.data_loader):
            raise ValueError(
                f"resume: {path!r} had {state['epoch_length']} iterations per epoch, the loader now has "
                f"{len(self.data_loader)}: batch_size or the data changed"
            )
        try:
            unwrap(self.network).load_state_dict(state["network"], strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[1:2] or [str(err)[:300]]
            raise ValueError(
                f"resume: {path!r} does not fit the network this config builds ({first[0].strip()}): the model "
                "settings or the tokenizer (models/text/) differ from the run being resumed; resume with the "
                "same settings, or start a new run in another output_dir"
            ) from err
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.load_state_dict({"epoch": state["epoch"], "max_epochs": self.max_epochs, "epoch_length": state["epoch_length"]})
        logger.info("resumed from %s at epoch %d", path, state["epoch"])

    def run(self) -> None:  # type: ignore[override]
        """Train (or resume) to ``max_epochs``."""
        seed_everything(self.seed)
        if self.resume:
            self._load_train_state()
            if self.state.epoch >= self.max_epochs:
                logger.info("resume: already at epoch %d of %d, nothing to do", self.state.epoch, self.max_epochs)
                return
        # the first epoch's iterator is created before EPOCH_STARTED fires
        _set_epoch(self.data_loader, self.state.epoch + 1)
        # on CPU the local terms' backward produces subnormal floats, which x86 handles ~100x
        # slower (a real-size GLoRIA step: 34.0 s with them, 23.5 s flushed to zero); flushing is
        # process-wide CPU state, so it is on for this run only and restored after
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            super().run(self.data_loader, max_epochs=self.max_epochs)
        finally:
            if flush:
                torch.set_flush_denormal(False)
