"""Cross-modal retrieval for ``reclf_cls``: Recall@K by pair identity and Precision@K by class.

- **Recall@1/5/10** (image→text, text→image) over the items of ``eval_split`` that have a report:
  candidates are the unique normalised reports, a hit is the image's own report
  (:func:`custom.metrics.retrieval_recall`).
- **Precision@5/10/100** by class agreement (the CheXpert 5×200 protocol,
  :func:`custom.metrics.precision_at_k`), over the single-class items: int labels, or dict labels
  with exactly one positive class. Queries (``precision_queries``):
  ``reports`` — image→text: each image queries the reports of the single-class items; text→image:
  each of those reports queries the single-class images; ``prompts`` — text→image: each phrase of
  each class of the prompt file queries the single-class images (precision macro-averaged over
  classes, each class weighing the same whatever its number of phrases); image→text is then
  undefined (null). ``auto`` picks ``reports`` when the split has reports, else ``prompts``.

Ranking uses the global embeddings (``retrieval_score: global``, the cosine) by default, or the
zero-shot score ½(s_g·cos + s_l·S_local) with ``global+local`` (see :mod:`custom.zero_shot`).
Every image and text is encoded once.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch

from ...data import labels
from ..checkpoints import require_pretrained
from ..encode import ImageItems
from ...metrics import nan_to_none, precision_at_k, retrieval_recall
from ..pretrained import load_pretrained
from ...data.prompts import load_prompts, match_classes
from ...data.text import report_key
from ...utils import as_bool, as_choice, as_optional_path, write_json
from ...data.labels import read_label_names
from ..scoring import PairScorer

logger = logging.getLogger("reclf")

RECALL_KS = (1, 5, 10)
PRECISION_KS = (5, 10, 100)
RETRIEVAL_SCORES = {"global": "global", "global+local": "combined"}


def single_classes(items: list[dict[str, Any]], label_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """(N,) class index of each item, or -1 where the item is not single-class (no labels, dict labels
    with zero or several positives), and the class names the indices refer to
    (:func:`custom.labels.single_class`: values parsed strictly)."""
    labelled = [it for it in items if it.get("labels") is not None]
    if any(isinstance(it["labels"], dict) for it in labelled):
        names = labels.task(labelled, label_names, "the datalist")[1]
    elif label_names:
        names = list(label_names)
    else:  # class indices without names: the indices are the names
        top = max((labels.unnamed_index(it["labels"], f"{labels.where(it)}: labels") for it in labelled), default=-1)
        names = [str(c) for c in range(top + 1)]
    return labels.single_class(items, names), names


def _null_metrics(prefix: str) -> dict[str, float]:
    return {f"{prefix}_precision@{k}": float("nan") for k in PRECISION_KS}


class CrossModalRetrievalEvaluator:
    """``retrieval.yaml``: image↔text retrieval of a pretraining checkpoint on ``eval_split``, written
    to ``output`` as flat JSON (``i2t_recall@K``, ``t2i_recall@K``, ``i2t_precision@K``,
    ``t2i_precision@K``, n_samples, eval_split, checkpoint, retrieval_score, precision_queries)."""

    def __init__(self, pretrained_ckpt: Any, datalist: str, dataset_dir: str, output: str, prompts: Any = "",
                 eval_split: str = "test", precision_queries: str = "auto", retrieval_score: str = "global",
                 image_size: int = 64, batch_size: int = 64, num_workers: int = 0, device: str = "cpu",
                 amp: bool | str = False, bad_images: str = "error", image_chunk: int = 512) -> None:
        self.ckpt, self.datalist, self.dataset_dir, self.output = pretrained_ckpt, datalist, dataset_dir, output
        self.prompts = as_optional_path(prompts)
        self.eval_split = eval_split
        self.queries = as_choice(precision_queries, ("auto", "reports", "prompts"), "precision_queries")
        self.retrieval_score = as_choice(retrieval_score, tuple(RETRIEVAL_SCORES), "retrieval_score")
        self.image_size, self.batch_size, self.image_chunk = int(image_size), int(batch_size), int(image_chunk)
        self.device, self.amp, self.bad_images = torch.device(device), as_bool(amp, "amp"), bad_images
        del num_workers  # images are decoded once up front: no loader workers needed

    def run(self) -> dict[str, Any]:
        from ...data.datalist import load_datalist

        ckpt = require_pretrained(self.ckpt)
        items = load_datalist(self.datalist, self.dataset_dir, self.eval_split, require=("image",))
        if not items:
            raise ValueError(f"datalist {self.datalist!r} has no images in split {self.eval_split!r}")
        model, tokenizer = load_pretrained(ckpt, self.device)
        scorer = PairScorer(model, tokenizer, self.device, RETRIEVAL_SCORES[self.retrieval_score],
                            self.batch_size, self.image_chunk, self.amp)
        images = ImageItems(items, self.image_size, bad_images=self.bad_images)
        items = images.items
        label_names = read_label_names(self.datalist)
        classes, names = single_classes(items, label_names)
        has_report = np.array([bool(str(it.get("report") or "").strip()) for it in items])
        reports = [str(it["report"]) for it, r in zip(items, has_report) if r]
        queries = self.queries if self.queries != "auto" else ("reports" if reports else "prompts")

        # one text set, encoded once: the reports, then (prompt queries) the prompt phrases
        texts, phrase_classes, prompt_file = list(reports), np.zeros(0, dtype=np.int64), None
        if queries == "prompts" and (classes >= 0).any():
            if self.prompts is None:
                raise ValueError("precision_queries 'prompts' needs a prompt file (--prompts FILE)")
            pairs = match_classes(load_prompts(self.prompts), names, self.prompts, require_all=False)
            phrases = [(names.index(name), phrase) for name, cp in pairs for phrase in cp.positive]
            texts += [p for _, p in phrases]
            phrase_classes = np.array([c for c, _ in phrases], dtype=np.int64)
            prompt_file = os.path.abspath(self.prompts)
        if queries == "reports" and not reports:
            raise ValueError(f"precision_queries 'reports': split {self.eval_split!r} has no reports")
        scores = (scorer.score(images, scorer.encode_texts(texts)) if texts
                  else torch.zeros(len(items), 0))  # (N images, T texts)

        metrics: dict[str, Any] = {f"{d}_recall@{k}": float("nan") for d in ("i2t", "t2i") for k in RECALL_KS}
        metrics.update(_null_metrics("i2t"), **_null_metrics("t2i"))
        n_reports = len(reports)
        if n_reports:
            paired = torch.from_numpy(np.flatnonzero(has_report))
            keys = torch.tensor([report_key(r) for r in reports])
            recall = retrieval_recall(scores[paired, :n_reports], keys, RECALL_KS)
            metrics.update({k: v for k, v in recall.items() if "recall@" in k},
                           n_unique_reports=recall["n_unique_reports"])
        single = classes >= 0
        n_queries = 0
        if single.any() and queries == "reports":
            rep_classes = classes[has_report]  # class of each report column
            cand = np.flatnonzero(rep_classes >= 0)
            if len(cand):
                sim = scores[single][:, cand].numpy()  # (single images, single-class reports)
                metrics.update(precision_at_k(sim, classes[single], rep_classes[cand], PRECISION_KS, "i2t"))
                metrics.update(precision_at_k(sim.T, rep_classes[cand], classes[single], PRECISION_KS, "t2i"))
                n_queries = int(single.sum())
        elif single.any() and len(phrase_classes):
            sim = scores[single][:, n_reports:].numpy().T  # (phrases, single-class images)
            per_class = [precision_at_k(sim[phrase_classes == c], phrase_classes[phrase_classes == c],
                                        classes[single], PRECISION_KS, "t2i") for c in np.unique(phrase_classes)]
            metrics.update({k: float(np.mean([p[k] for p in per_class])) for k in per_class[0]})
            n_queries = int(len(phrase_classes))
        metrics.update(
            n_samples=len(items), n_reports=n_reports, n_single_class=int(single.sum()),
            n_precision_queries=n_queries, precision_queries=queries, prompts=prompt_file,
            retrieval_score=self.retrieval_score, scoring=scorer.description,
            eval_split=self.eval_split, checkpoint=os.path.abspath(ckpt),
        )
        metrics = nan_to_none(metrics)
        write_json(metrics, self.output)
        logger.info("wrote %s: %s", self.output, json.dumps(metrics))
        print(json.dumps(metrics, indent=2))
        return metrics
