"""Zero-shot classification with a pretraining checkpoint: image × prompt scores, class scores.

Image–text score (DESIGN §3), for an image i and a text t:

    score(i, t) = ½ · (s_g · cos(g_i, t_g) + s_l · S_local(i, t))

with s_g, s_l the model's own *trained* logit scales (``global_scale``, ``local_scale``) and
S_local the relation-enhanced local similarity (:meth:`RECLFModel.local_similarity`). Why the
trained scales: the raw terms live on different ranges (a cosine vs. a β-weighted word score
plus a learned matching term, or GLoRIA's log-sum-exp), and the scales are exactly what the two
contrastive losses calibrated each term with, so each term enters as the logit the model was
trained to rank by. They are fixed parameters of the checkpoint: nothing depends on the test set
(no per-class z-scoring over the test images as GLoRIA's zero-shot code does). For a GLoRIA
checkpoint with ``gloria_pooling: sum`` the local term is length-corrected, S − log(#words)
(= GLoRIA's ``mean`` pooling), since log Σ_k grows with the length of the phrase and would favour
the class with the longest prompts. A ConVIRT checkpoint has no local term: global only (recorded
in the output JSON under ``scoring``).

Class scores: the mean of the image's scores over the class's phrases. Multi-class datasets
(int labels + ``label_names``): softmax over classes, argmax decides. Multi-label datasets
(dict labels): each class has positive and negative phrases and its probability is the softmax
over (positive, negative) = sigmoid(pos − neg), thresholded at 0.5.
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
from ...metrics import classification_metrics, nan_to_none
from ..pretrained import load_pretrained
from ...data.prompts import PromptError, load_prompts, match_classes
from ...utils import as_bool, as_choice, write_json
from ...data.labels import read_label_names
from ..scoring import SCORES, PairScorer

logger = logging.getLogger("reclf")



def label_task(items: list[dict[str, Any]], datalist: str) -> tuple[bool, list[str]]:
    """(multi_label, class names) of labelled items (:func:`custom.labels.task`)."""
    return labels.task(items, read_label_names(datalist), datalist)


def label_targets(items: list[dict[str, Any]], names: list[str], multi_label: bool) -> np.ndarray:
    """(N,) class indices, or (N, C) of 1 / 0 / -1 (absent key or null = -1 = unknown, masked)."""
    return labels.targets(items, names, multi_label)


def phrase_index(groups: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    """Unique texts of several phrase groups and the (U, G) averaging matrix (column g = mean over group g)."""
    unique = list(dict.fromkeys(p for group in groups for p in group))
    where = {p: n for n, p in enumerate(unique)}
    mean = torch.zeros(len(unique), len(groups))
    for g, group in enumerate(groups):
        for p in group:
            mean[where[p], g] += 1.0 / len(group)
    return unique, mean


def prompt_metrics(scorer: PairScorer, images: ImageItems, datalist: str, prompts_file: str) -> dict[str, Any]:
    """Zero-shot metrics of decoded labelled ``images`` with the classes' prompts of ``prompts_file``.

    The computation of :class:`ZeroShotEvaluator` for a model already loaded in ``scorer`` (the
    learning-curve benchmark scores many checkpoints on the same images): class scores = the
    mean over a class's phrases; multi-label classes: sigmoid(positive − negative); multi-class:
    softmax. Returns :func:`custom.metrics.classification_metrics` plus ``prompts``, ``scoring``,
    ``task``, ``n_phrases``, ``n_classes``.
    """
    prompts_file = str(prompts_file)
    prompts = load_prompts(prompts_file)
    multi_label, names = label_task(images.items, datalist)
    pairs = match_classes(prompts, names, prompts_file, require_all=not multi_label)
    if multi_label:
        no_negative = [name for name, p in pairs if not p.negative]
        if no_negative:
            raise PromptError(f"prompt file {prompts_file!r}, class {no_negative[0]!r}: multi-label (dict) "
                              "labels need 'negative' phrases (e.g. 'no pleural effusion') for each class")
        left_out = [n for n in names if n not in {name for name, _ in pairs}]
        if left_out:
            logger.warning("zero-shot: classes without prompts left out: %s", left_out)
    classes = [name for name, _ in pairs]
    groups = [p.positive for _, p in pairs] + ([p.negative for _, p in pairs] if multi_label else [])
    texts, mean = phrase_index(groups)
    scores = scorer.score(images, scorer.encode_texts(texts))  # (N, U)
    per_class = scores @ mean  # (N, C) or (N, 2C): the mean over each class's phrases
    c = len(classes)
    if multi_label:
        probs = torch.sigmoid(per_class[:, :c] - per_class[:, c:])  # softmax over (positive, negative)
    else:
        probs = torch.softmax(per_class, dim=1)
    # labels of the classes that have prompts, in their order
    targets = label_targets(images.items, classes if multi_label else names, multi_label)
    metrics = classification_metrics(probs.numpy(), targets, classes, multi_label)
    metrics.update(prompts=os.path.abspath(prompts_file), scoring=scorer.description,
                   task="multi_label" if multi_label else "multi_class", n_phrases=len(texts), n_classes=c)
    return metrics


class ZeroShotEvaluator:
    """``zero_shot.yaml``: zero-shot classification of ``eval_split`` with class prompts, written to
    ``output`` as flat JSON (acc, macro_f1, auroc_mean, auroc/<class>, n_samples, eval_split,
    checkpoint, prompts, scoring, task, n_phrases)."""

    def __init__(self, pretrained_ckpt: Any, datalist: str, dataset_dir: str, prompts: str, output: str,
                 eval_split: str = "test", image_size: int = 64, batch_size: int = 64, num_workers: int = 0,
                 device: str = "cpu", amp: bool | str = False, score: str = "combined", bad_images: str = "error",
                 image_chunk: int = 512) -> None:
        self.ckpt, self.datalist, self.dataset_dir, self.prompts = pretrained_ckpt, datalist, dataset_dir, str(prompts)
        self.output, self.eval_split, self.image_size = output, eval_split, int(image_size)
        self.batch_size, self.num_workers, self.device = int(batch_size), int(num_workers), torch.device(device)
        self.amp, self.score_mode = as_bool(amp, "amp"), as_choice(score, SCORES, "score")
        self.bad_images, self.image_chunk = bad_images, int(image_chunk)

    def run(self) -> dict[str, Any]:
        from ...data.datalist import load_datalist

        ckpt = require_pretrained(self.ckpt)
        items = load_datalist(self.datalist, self.dataset_dir, self.eval_split, require=("image", "labels"),
                              missing="skip")
        if not items:
            raise ValueError(f"datalist {self.datalist!r} has no labelled images in split {self.eval_split!r}")
        model, tokenizer = load_pretrained(ckpt, self.device)
        scorer = PairScorer(model, tokenizer, self.device, self.score_mode, self.batch_size, self.image_chunk, self.amp)
        images = ImageItems(items, self.image_size, bad_images=self.bad_images)
        metrics = prompt_metrics(scorer, images, self.datalist, self.prompts)
        metrics.update(eval_split=self.eval_split, checkpoint=os.path.abspath(ckpt))
        metrics = nan_to_none(metrics)
        write_json(metrics, self.output)
        logger.info("wrote %s: %s", self.output, json.dumps(metrics))
        print(json.dumps(metrics, indent=2))
        return metrics
