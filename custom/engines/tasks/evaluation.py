"""Embedding a dataset with a trained model, retrieval evaluation, and embedding export."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from ...data.datalist import load_datalist
from ...data.datasets import PretrainDataset
from ...data.loaders import make_loader
from ...metrics import nan_to_none
from ..pretrained import load_pretrained
from ...utils import as_amp, write_json
from ..encode import embed, retrieval_metrics  # noqa: F401 (custom.evaluation.embed: old name)

logger = logging.getLogger("reclf")


def _eval_loader(ckpt: str, datalist: str, dataset_dir: str, split: str, image_size: int, batch_size: int,
                 num_workers: int, device, require=("image", "report")):
    model, tokenizer = load_pretrained(ckpt, device)
    # retrieval needs pairs: items without a report are skipped and counted in the log
    items = load_datalist(datalist, dataset_dir, split, require=require, missing="skip")
    if not items:
        raise ValueError(f"datalist {datalist!r} has no image-report pairs in split {split!r}")
    dataset = PretrainDataset(items, tokenizer, image_size=image_size, augment=False)
    return model, dataset.items, make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)


class RetrievalEvaluator:
    """``evaluate.yaml``: image↔report retrieval of a pretraining checkpoint on ``eval_split``,
    written to ``output`` as flat JSON with the DESIGN §5 keys."""

    def __init__(self, ckpt: str, datalist: str, dataset_dir: str, output: str, eval_split: str = "test",
                 image_size: int = 128, batch_size: int = 64, num_workers: int = 0, device: str = "cpu",
                 amp: bool | str = False) -> None:
        self.args = dict(ckpt=ckpt, datalist=datalist, dataset_dir=dataset_dir, split=eval_split,
                         image_size=int(image_size), batch_size=int(batch_size), num_workers=int(num_workers),
                         device=torch.device(device))
        self.output = output
        self.eval_split = eval_split
        self.amp = as_amp(amp, "amp")

    def run(self) -> dict[str, Any]:
        model, _, loader = _eval_loader(**self.args)
        metrics = retrieval_metrics(model, loader, self.args["device"], self.amp)
        metrics.update(eval_split=self.eval_split, checkpoint=os.path.abspath(self.args["ckpt"]))
        metrics = nan_to_none(metrics)
        write_json(metrics, self.output)
        logger.info("wrote %s: %s", self.output, json.dumps(metrics))
        print(json.dumps(metrics, indent=2))
        return metrics


class EmbeddingExporter:
    """``inference.yaml``: embed the images and/or reports of a datalist split into a ``.pt`` file
    holding ``image`` / ``report`` (N, D_g) L2-normalised, ``paths`` and ``reports``."""

    def __init__(self, ckpt: str, datalist: str, dataset_dir: str, output: str, split: str = "all",
                 modality: str = "both", image_size: int = 128, batch_size: int = 64, num_workers: int = 0,
                 device: str = "cpu") -> None:
        self.args = dict(ckpt=ckpt, datalist=datalist, dataset_dir=dataset_dir, split=split,
                         image_size=int(image_size), batch_size=int(batch_size), num_workers=int(num_workers),
                         device=torch.device(device))
        self.modality = str(modality).lower()
        if self.modality not in ("both", "image", "report"):
            raise ValueError(f"modality: expected both|image|report, got {modality!r}")
        self.output = output

    def run(self) -> str:
        from ...utils import atomic_torch_save

        model, items, loader = _eval_loader(**self.args)
        emb = embed(model, loader, self.args["device"], images=self.modality != "report",
                    reports=self.modality != "image")
        result = {k: emb[k] for k in ("image", "report") if k in emb}
        result.update(paths=[it["image"] for it in items], reports=[it.get("report", "") for it in items],
                      checkpoint=os.path.abspath(self.args["ckpt"]))
        atomic_torch_save(result, self.output)
        logger.info("wrote %d embeddings to %s", len(items), self.output)
        return self.output
