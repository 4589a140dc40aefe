"""What the downstream bundles share: finding and loading checkpoints (the pretraining one, their
own ``model.pt`` + ``model.json``), and encoding image items and free texts (prompts, reports) with a pretrained model, in batches, once."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.datasets import decode_images, image_transform
from ..nets.factory import unwrap
from ..data.text import encode_reports
from ..utils import as_optional_path, autocast

logger = logging.getLogger("reclf")

PRETRAIN_FIRST = "run reclf_pretrain/configs/train.yaml first (or pass --pretrained_ckpt PATH/model.pt)"


def require_checkpoint(ckpt: Any, what: str, how: str) -> str:
    """The checkpoint path, or a clear error naming ``what`` is missing and ``how`` to make it."""
    path = as_optional_path(ckpt)
    if path is None:
        raise FileNotFoundError(f"no {what} given: {how}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} not found: {how}")
    return path


def require_pretrained(ckpt: Any) -> str:
    """The checkpoint path, or a clear error when zero-shot / retrieval have nothing to evaluate."""
    return require_checkpoint(ckpt, "pretrained checkpoint", PRETRAIN_FIRST)


def load_weights_strict(network: torch.nn.Module, ckpt: str, hint: str = "") -> None:
    """Load a plain state dict file (a downstream bundle's ``model.pt``; a DDP ``module.`` prefix is
    dropped) strictly into ``network`` (its DDP wrapper, if any, is looked through); a mismatch
    names the file and ``hint`` (where the network's shape comes from)."""
    from .checkpoints import load_state

    state = load_state(ckpt)
    try:
        unwrap(network).load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{ckpt!r} does not match network_def{f' ({hint})' if hint else ''}: {err}") from err


def read_model_meta(ckpt: str, image_size: int, kind: str) -> dict[str, Any]:
    """The verified ``model.json`` of a downstream ``model.pt`` (:func:`custom.checkpoints.read_meta`,
    ``kind`` = ``linear_probe`` | ``segmentation``); refuses an ``image_size`` other than the
    training one."""
    from .checkpoints import meta_path, read_meta

    meta = read_meta(ckpt, kind)
    if int(meta["image_size"]) != int(image_size):
        raise ValueError(f"image_size {image_size} differs from the {kind} checkpoint's training image_size "
                         f"{meta['image_size']} ({meta_path(ckpt)}): pass --image_size {meta['image_size']}")
    return meta


def optional_pretrained(ckpt: Any) -> str | None:
    """The checkpoint path if it exists; else None with a warning (linear probe / segmentation then
    start from random init: the baseline)."""
    path = as_optional_path(ckpt)
    if path is not None and os.path.isfile(path):
        return path
    logger.warning("pretrained checkpoint %r not found: starting from random init (%s)", path, PRETRAIN_FIRST)
    return None


class ImageItems(torch.utils.data.Dataset):
    """Decoded, resized images of datalist items (decoded once; see :func:`custom.data.decode_images`)."""

    def __init__(self, items: list[dict[str, Any]], image_size: int, bad_images: str = "error",
                 cache_dir: str | None = None) -> None:
        self.images, self.items = decode_images(items, image_transform(image_size), cache_dir, bad_images)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # a plain tensor: MONAI's MetaTensor (from the resize transforms) would carry its metadata
        # into the embeddings and breaks numpy-style indexing of the scores downstream
        image = torch.as_tensor(np.asarray(self.images[index]["image"]), dtype=torch.float32)
        return {"image": image, "index": index}


@torch.no_grad()
def encode_images(
    model: torch.nn.Module, dataset: ImageItems, device: str | torch.device, batch_size: int = 64,
    local: bool = False, amp: bool = False, num_workers: int = 0,
) -> dict[str, torch.Tensor]:
    """``global`` (N, D_g) normalised image embeddings in item order; with ``local`` also
    ``regions`` (N, R, D_l) and ``positions`` (R, D_p) (RECLF) on the CPU."""
    net = unwrap(model).eval()
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(batch_size), shuffle=False,
                                         num_workers=int(num_workers))
    parts: dict[str, list[torch.Tensor]] = {"global": [], "regions": []}
    positions = None
    for batch in loader:
        with autocast(device, amp):
            out = net.encode_image(batch["image"].to(device), local=local)
        parts["global"].append(out["global"].float().cpu())
        if local and "regions" in out:
            parts["regions"].append(out["regions"].float().cpu())
            positions = out.get("positions")
    result = {k: torch.cat(v) for k, v in parts.items() if v}
    if positions is not None:
        result["positions"] = positions.float().cpu()
    return result


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], device: str | torch.device, batch_size: int = 64,
    local: bool = False, max_length: int = 128, amp: bool = False,
) -> dict[str, torch.Tensor]:
    """``global`` (T, D_g) normalised text embeddings; with ``local`` also ``words`` (T, W, D_l)
    and ``word_mask`` (T, W), padded to the longest text, on the CPU."""
    net = unwrap(model).eval()
    device = torch.device(device)
    globals_, words, masks = [], [], []
    for start in range(0, len(texts), int(batch_size)):
        enc = encode_reports(tokenizer, list(texts[start:start + int(batch_size)]), max_length=max_length)
        with autocast(device, amp):
            out = net.encode_text(*(torch.from_numpy(enc[k]).to(device) for k in ("input_ids", "attention_mask",
                                                                                 "word_ids")), local=local)
        globals_.append(out["global"].float().cpu())
        if local and "words" in out:
            words.append(out["words"].float().cpu())
            masks.append(out["word_mask"].cpu())
    result = {"global": torch.cat(globals_)}
    if words:
        width = max(w.shape[1] for w in words)
        result["words"] = torch.cat([torch.nn.functional.pad(w, (0, 0, 0, width - w.shape[1])) for w in words])
        result["word_mask"] = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])
    return result
