"""The one embedding loop: image items, free texts (prompts, reports) and datalist pairs encoded
with a pretrained model, in batches, once (zero-shot, retrieval, linear probe, pretraining
validation and evaluation all encode through here).

Finding and loading checkpoints moved to :mod:`custom.engines.checkpoints`; their old names
(``custom.downstream.optional_pretrained`` ...) are re-exported here for configs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.datasets import decode_images, image_transform
from ..nets.factory import unwrap
from ..data.text import encode_reports
from ..utils import autocast
from ..metrics import retrieval_recall
from .checkpoints import (  # noqa: F401 (custom.downstream.*: the old names, used by configs)
    PRETRAIN_FIRST, load_weights_strict, optional_pretrained, read_model_meta, require_checkpoint, require_pretrained,
)

logger = logging.getLogger("reclf")



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


# ---- paired embeddings (pretraining evaluation and validation) ----------------------------


@torch.no_grad()
def embed(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: str | torch.device, amp: bool = False,
    images: bool = True, reports: bool = True,
) -> dict[str, torch.Tensor]:
    """Global image and report embeddings (N, D_g) of every item of ``loader``, in order."""
    net = unwrap(model).eval()
    device = torch.device(device)
    parts: dict[str, list[torch.Tensor]] = {"image": [], "report": [], "report_id": [], "index": []}
    for batch in loader:
        with autocast(device, amp):
            if images:
                parts["image"].append(net.encode_image(batch["image"].to(device), local=False)["global"].float().cpu())
            if reports:
                text = net.encode_text(
                    batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["word_ids"].to(device),
                    local=False,
                )
                parts["report"].append(text["global"].float().cpu())
        parts["report_id"].append(batch["report_id"])
        parts["index"].append(batch["index"])
    return {k: torch.cat(v) for k, v in parts.items() if v}


def retrieval_metrics(model, loader, device, amp: bool = False) -> dict[str, float]:
    """Recall@1/5/10 both ways on the global cosine similarity."""
    emb = embed(model, loader, device, amp)
    return retrieval_recall(emb["image"] @ emb["report"].t(), emb["report_id"])
