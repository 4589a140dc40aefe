"""The one embedding loop: image items, free texts (prompts, reports) and datalist pairs encoded
with a pretrained model, in batches, once (zero-shot, retrieval, linear probe, pretraining
validation and evaluation all encode through here).

Finding and loading checkpoints moved to :mod:`custom.engines.checkpoints`; their old names
(``custom.downstream.optional_pretrained`` ...) are re-exported here for configs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.datasets import decode_images
from ..data.transforms import image_transform
from ..nets.factory import unwrap
from ..data.text import encode_reports
from ..distributed import is_distributed, rank, world_size
from ..utils import as_optional_path, autocast
from ..metrics import retrieval_recall
from .checkpoints import (  # noqa: F401 (custom.downstream.*: the old names, used by configs)
    PRETRAIN_FIRST, load_weights_strict, optional_pretrained, read_model_meta, require_checkpoint, require_pretrained,
)

logger = logging.getLogger("reclf")



def encode_batches(
    loader: Iterable[dict[str, Any]], encode: Callable[[dict[str, Any]], dict[str, torch.Tensor | None]],
    device: torch.device, amp: bool = False,
) -> dict[str, list[torch.Tensor]]:
    """The one embedding loop: ``encode(batch)`` under autocast for every batch of ``loader``.

    Args:
        loader: batches (dicts). encode: batch -> {name: tensor (B, ...) or None (skipped)}; runs
            under :func:`custom.utils.autocast` (``amp``) on ``device``. Callers hold ``no_grad``.

    Returns:
        {name: [one CPU tensor per batch]}, floating tensors as float32, in loader order.
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        with autocast(device, amp):
            out = encode(batch)
        for name, value in out.items():
            if value is not None:
                parts.setdefault(name, []).append(value.float().cpu() if value.is_floating_point() else value.cpu())
    return parts


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

    def encode(batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        out = net.encode_image(batch["image"].to(device), local=local)
        has_local = local and "regions" in out
        return {"global": out["global"], "regions": out["regions"] if has_local else None,
                "positions": out.get("positions") if has_local else None}

    parts = encode_batches(loader, encode, device, amp)
    positions = parts.pop("positions", None)
    result = {k: torch.cat(v) for k, v in parts.items() if v}
    if positions:
        result["positions"] = positions[-1]  # (R, D_p): the same grid for every batch
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


# ---- paired embeddings (pretraining evaluation and validation) ----------------------------


@torch.no_grad()
def embed(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: str | torch.device, amp: bool = False,
    images: bool = True, reports: bool = True,
) -> dict[str, torch.Tensor]:
    """Global image and report embeddings (N, D_g) of every item of ``loader``, in order."""
    net = unwrap(model).eval()
    device = torch.device(device)

    def encode(batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        image = net.encode_image(batch["image"].to(device), local=False)["global"] if images else None
        report = net.encode_text(
            batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["word_ids"].to(device),
            local=False,
        )["global"] if reports else None
        return {"image": image, "report": report, "report_id": batch["report_id"], "index": batch["index"]}

    return {k: torch.cat(v) for k, v in encode_batches(loader, encode, device, amp).items() if v}


def retrieval_metrics(model, loader, device, amp: bool = False) -> dict[str, float]:
    """Recall@1/5/10 both ways on the global cosine similarity."""
    emb = embed(model, loader, device, amp)
    return retrieval_recall(emb["image"] @ emb["report"].t(), emb["report_id"])


# ---- frozen-encoder features, sharded across processes (linear probe) ---------------------


@torch.no_grad()
def encode_image_features(
    network: nn.Module, items: Sequence[dict[str, Any]], image_size: int, device: str | torch.device,
    batch_size: int = 64, amp: bool = False, num_workers: int = 0, bad_images: str = "error",
    cache_dir: str | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Frozen-encoder features of ``items`` (the linear probe's), computed once, in item order.

    Under ``torch.distributed`` each process decodes and encodes the shard a ``DistributedSampler``
    gives it, and the shards are all-gathered, so every process returns the full result.

    Args:
        network: an :class:`ImageClassifier` (its ``features``: (B, 1, H, W) → (B, F)).
        items: datalist items with ``image``.

    Returns:
        features (N', F) float32 on the CPU and the positions (N',) in ``items`` they belong to
        (N' < N only when ``bad_images="skip"`` dropped unreadable images).
    """
    net = unwrap(network).eval()
    device = torch.device(device)
    dim = net.head.in_features
    n = len(items)
    if n == 0:
        return torch.zeros(0, dim), np.zeros(0, dtype=np.int64)
    if is_distributed():
        # pads with repeats so that every shard has the same length; repeats are written twice
        mine = list(torch.utils.data.DistributedSampler(range(n), num_replicas=world_size(), rank=rank(),
                                                        shuffle=False))
        logger.info("process %d of %d encodes %d of %d images", rank(), world_size(), len(mine), n)
    else:
        mine = list(range(n))
    dataset = ImageItems([dict(items[i], _position=i) for i in mine], image_size, bad_images=bad_images,
                         cache_dir=as_optional_path(cache_dir))
    positions = torch.tensor([it["_position"] for it in dataset.items], dtype=torch.int64)
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(batch_size), shuffle=False,
                                         num_workers=int(num_workers))
    parts = encode_batches(loader, lambda batch: {"features": net.features(batch["image"].to(device))}, device, amp)
    features = torch.cat([torch.zeros(0, dim), *parts.get("features", [])])
    if is_distributed():
        features, positions = _all_gather_rows(features, positions, device)
    out = torch.zeros(n, dim)
    present = torch.zeros(n, dtype=torch.bool)
    out[positions] = features
    present[positions] = True
    kept = torch.nonzero(present).flatten()
    return out[kept], kept.numpy()


def _all_gather_rows(rows: torch.Tensor, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather (m_r, F) rows and their (m_r,) indices of unequal length m_r across processes."""
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([rows.shape[0]], device=comm)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    padded = F.pad(rows, (0, 0, 0, longest - rows.shape[0])).to(comm)
    padded_index = F.pad(index, (0, longest - index.shape[0])).to(comm)
    all_rows = [torch.empty_like(padded) for _ in sizes]
    all_index = [torch.empty_like(padded_index) for _ in sizes]
    dist.all_gather(all_rows, padded)
    dist.all_gather(all_index, padded_index)
    rows = torch.cat([r[:m].cpu() for r, m in zip(all_rows, sizes)])
    index = torch.cat([i[:m].cpu() for i, m in zip(all_index, sizes)])
    return rows, index
