"""Seeing what a pretraining checkpoint learned (DESIGN §2 "Seeing it").

For each image/report pair, one PNG: the image with the word→region attention α of the most
important words overlaid (one shared colour scale), the IRM importance β of every word as a bar
chart and the SRM word→word attention as a heatmap. The tensors come from the model's own scorer
(:meth:`RECLFModel.matched_pair_details`), so the pictures show exactly what the loss computes.

On the demo data (items carry structured ``findings`` and a lesion ``mask``) it also measures
**grounding** (the arithmetic: :mod:`custom.metrics.grounding`): for each finding word of a report ("effusion", "nodule", ...), the share of its
attention mass that falls inside that finding's mask, averaged over the finding words of a pair
and then over pairs. The demo stores one mask per study, the union of its lesions; a finding's
own mask is recovered from it exactly when it can be: a study's only finding owns the whole mask,
and two lateral findings on opposite sides split it at the image midline (a lung finding never
crosses it: the demo draws it inside its lung). Studies where that is impossible (an opposite-side
pair plus cardiomegaly, whose silhouette straddles the midline) are skipped and counted.
Attention is spread evenly over the pixels of its grid cell, so a word's share is
Σ_r α_r · m_r with m_r the fraction of cell r inside the mask; the same sum with uniform α
(the mask's area fraction) is reported beside it as the chance level. ``side_grounding`` does
the same for the words "left"/"right": the share of their attention on that side of the patient
(chance 0.5).

Python use (e.g. an ablation over objectives)::

    from custom.visualize import grounding_score
    grounding_score("runs/reclf/models/model.pt", "data/demo/datalist.json", "data/demo",
                    split="test", num_samples=None, image_size=64)["grounding"]
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ....data.datalist import load_datalist
from ....data.datasets import PretrainDataset
from ....data.loaders import make_loader
from ....data.transforms import image_transform
from ....data.text import encode_reports, normalize_report, token_limit
from ....utils import write_json
from ....metrics.grounding import (  # noqa: F401 (custom.visualize.<name>: the old names)
    FINDING_WORDS, MASK_SOURCE, attention_share_in_mask, demo_finding_masks, finding_word_positions,
    grounding_from_records, mask_on_grid,
)
from .render import NOTE_CONVIRT, NOTE_GLORIA, render_record  # noqa: F401 (old names)

logger = logging.getLogger("reclf")


# --------------------------------------------------------------------------------------------
# the words of a report (the grounding arithmetic is custom/metrics/grounding.py)
# --------------------------------------------------------------------------------------------
def report_words(tokenizer, report: str, max_length: int = 128) -> list[str]:
    """The words of ``report`` in the order of the model's word axis (index k = word k).

    Uses :func:`custom.text.encode_reports` for the indices (punctuation dropped, truncation
    at ``max_length`` tokens), and the tokenizer's character offsets for the strings.
    """
    text = normalize_report(report)
    word_ids = encode_reports(tokenizer, [report], max_length=max_length)["word_ids"][0]
    offsets = tokenizer(text, max_length=token_limit(tokenizer, max_length), truncation=True, return_offsets_mapping=True)["offset_mapping"]
    spans: dict[int, list[int]] = {}
    for token, word in enumerate(word_ids.tolist()):
        if word >= 0:
            start, end = offsets[token]
            span = spans.setdefault(word, [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    return [text[spans[k][0]:spans[k][1]] for k in range(len(spans))]


# --------------------------------------------------------------------------------------------
# evidence: the model's tensors for each pair
# --------------------------------------------------------------------------------------------
def _check_ckpt(ckpt: str) -> None:
    if not ckpt or not os.path.isfile(ckpt):
        raise FileNotFoundError(
            f"ckpt {ckpt!r} not found: train one with bundles/reclf_pretrain/configs/train.yaml, or pass "
            "--ckpt path/to/model.pt (a reclf pretraining checkpoint with model.json and text/ beside it)"
        )


def _parse_indices(indices: Any) -> list[int]:
    """'' / None -> []; '3,7' / [3, 7] / 3 -> [3, 7] (a command line may give any of these)."""
    if indices is None or (isinstance(indices, str) and not indices.strip()):
        return []
    if isinstance(indices, (int, np.integer)):
        return [int(indices)]
    if isinstance(indices, str):
        indices = [p for p in indices.strip("[]() ").split(",") if p.strip()]
    try:
        return [int(i) for i in indices]
    except (TypeError, ValueError):
        raise ValueError(f"indices: expected item positions like '3,7' or [3, 7], got {indices!r}") from None


@torch.no_grad()
def collect_evidence(
    model: torch.nn.Module,
    tokenizer,
    items: list[dict[str, Any]],
    image_size: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    max_length: int = 128,
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """Run the model on image/report pairs and keep, per pair, what the pictures and grounding need.

    Returns one dict per item (in order): ``item``, ``words`` (list of T' strings), ``image`` (S, S)
    as the model saw it, ``grid`` (h, w), ``objective``, and for local objectives ``attention``
    (T', R), ``word_similarity`` (T',), ``importance`` (T',) or None, ``srm_attention``
    (heads, T', T') or None, ``score`` S_local of the pair, all numpy on the CPU, padding cut off.
    """
    device = torch.device(device)
    net = getattr(model, "module", model).eval()
    dataset = PretrainDataset(items, tokenizer, image_size=image_size, augment=False, max_length=max_length)
    loader = make_loader(dataset, min(int(batch_size), len(dataset)), shuffle=False, num_workers=num_workers)
    records: list[dict[str, Any]] = []
    for batch in loader:
        images = batch["image"].to(device)
        image = net.encode_image(images)
        text = net.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                               batch["word_ids"].to(device))
        details = net.matched_pair_details(image, text) if net.scorer is not None else None
        for b, index in enumerate(batch["index"].tolist()):
            item = dataset.items[index]
            words = report_words(tokenizer, item["report"], max_length)
            record: dict[str, Any] = {"item": item, "words": words, "objective": net.objective,
                                      "image": images[b, 0].float().cpu().numpy()}
            if details is not None:
                n = len(words)
                valid = details["word_mask"][b].cpu()
                if int(valid.sum()) != n or not bool(valid[:n].all()):
                    raise RuntimeError(f"word alignment mismatch for {item.get('image')}: {n} words vs mask {valid.tolist()}")

                def cut(name: str, *axes: int) -> np.ndarray | None:
                    value = details[name]
                    if value is None:
                        return None
                    value = value[b].float().cpu()
                    for axis in axes:
                        value = value.narrow(axis, 0, n)
                    return value.numpy()

                record.update(
                    grid=tuple(image["grid_size"]), attention=cut("attention", 0), word_similarity=cut("word_similarity", 0),
                    importance=cut("importance", 0) if details["importance"] is not None else None,
                    srm_attention=cut("srm_attention", 1, 2), score=float(details["score"][b]),
                    irm=getattr(net.scorer, "irm", None) is not None, srm=getattr(net.scorer, "srm", None) is not None,
                )
            records.append(record)
    return records


def add_finding_masks(records: list[dict[str, Any]], image_size: int) -> None:
    """Attach ``finding_masks``: a list of (finding name, (S, S) mask or None, word positions) to
    each record whose item carries demo ``findings`` and a ``mask`` (in the model's geometry)."""
    transform = image_transform(image_size)
    for record in records:
        item = record["item"]
        findings = item.get("findings")
        if not findings or not item.get("mask"):
            continue
        union = np.asarray(transform({"image": item["mask"]})["image"])[0]
        masks = demo_finding_masks(union, findings)
        record["finding_masks"] = [
            (f["finding"], None if masks is None else masks[n], finding_word_positions(record["words"], f["finding"]))
            for n, f in enumerate(findings)
        ]
        record["findings_ambiguous"] = masks is None


def _select(items: list[dict[str, Any]], num_samples: int | None, indices: Sequence[int] = ()) -> list[int]:
    """Positions to show: ``indices`` if given, else the first ``num_samples`` items with demo
    findings when the datalist has them (a normal study has nothing to point at), else the first ones."""
    if indices:
        bad = [i for i in indices if not 0 <= i < len(items)]
        if bad:
            raise ValueError(f"indices {bad} out of range: the split has {len(items)} image-report pairs")
        return list(indices)
    order = list(range(len(items)))
    with_findings = [i for i in order if items[i].get("findings")]
    if with_findings:
        order = with_findings + [i for i in order if not items[i].get("findings")]
    return order if num_samples is None or int(num_samples) < 0 else order[: int(num_samples)]


def _load(ckpt: str, datalist: str, dataset_dir: str, split: str, device):
    from ...pretrained import load_pretrained

    _check_ckpt(ckpt)
    model, tokenizer = load_pretrained(ckpt, device)
    items = load_datalist(datalist, dataset_dir, split, require=("image", "report"), missing="skip")
    if not items:
        raise ValueError(f"datalist {datalist!r} has no image-report pairs in split {split!r}")
    return model, tokenizer, items


def _header(model, ckpt: str, split: str, image_size: int) -> dict[str, Any]:
    net = getattr(model, "module", model)
    return {"objective": net.objective, "srm": getattr(net.scorer, "srm", None) is not None,
            "irm": getattr(net.scorer, "irm", None) is not None, "checkpoint": os.path.abspath(ckpt),
            "eval_split": split, "image_size": int(image_size)}


def _grounding(model, tokenizer, items, header, num_samples, image_size, batch_size, device, max_length,
               num_workers) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grounding result dict (header + numbers) and the records it was measured on."""
    result = dict(header)
    if header["objective"] == "convirt":
        result.update(grounding=None, grounding_uniform=None, n_samples=0, note=NOTE_CONVIRT)
        return result, []
    if num_samples is not None and int(num_samples) == 0:
        result.update(grounding=None, grounding_uniform=None, n_samples=0, note="not measured (grounding_samples: 0)")
        return result, []
    chosen = [it for it in items if it.get("findings") and it.get("mask")]
    if num_samples is not None and int(num_samples) > 0:
        chosen = chosen[: int(num_samples)]
    if not chosen:
        result.update(grounding=None, grounding_uniform=None, n_samples=0,
                      note="grounding needs demo-style items (structured 'findings' and a lesion 'mask'): N/A here")
        return result, []
    records = collect_evidence(model, tokenizer, chosen, image_size, batch_size, device, max_length, num_workers)
    add_finding_masks(records, image_size)
    result.update(grounding_from_records(records), grid=list(records[0]["grid"]), mask_source=MASK_SOURCE)
    return result, records


def grounding_score(
    ckpt: str,
    datalist: str,
    dataset_dir: str,
    split: str = "test",
    num_samples: int | None = None,
    image_size: int = 64,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    max_length: int = 128,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Grounding of one pretraining checkpoint on demo-style data (see the module docstring).

    Args:
        ckpt: a reclf ``model.pt`` (``model.json`` and ``text/`` beside it).
        datalist, dataset_dir, split: the data (DESIGN §4); only items with ``findings`` and a ``mask`` count.
        num_samples: use the first N such items (None or -1: all). image_size: as in training.
        batch_size, device, max_length (token budget, as in training), num_workers: as named.

    Returns:
        a flat dict: ``grounding`` and ``grounding_uniform`` (chance) in [0, 1] or None,
        ``grounding/<finding>``, ``n_samples``, ``n_finding_words``, ``n_skipped_ambiguous``,
        ``side_grounding`` and ``n_side_words``,
        ``objective``, ``srm``, ``irm``, ``checkpoint``, ``eval_split``, ``image_size``, ``grid``,
        ``mask_source``; for ``convirt`` (no local attention) ``grounding`` is None with a ``note``.
    """
    device = torch.device(device)
    model, tokenizer, items = _load(ckpt, datalist, dataset_dir, split, device)
    result, _ = _grounding(model, tokenizer, items, _header(model, ckpt, split, image_size), num_samples,
                           int(image_size), batch_size, device, max_length, num_workers)
    return result


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# the bundle component
# --------------------------------------------------------------------------------------------
class AttentionVisualizer:
    """``visualize.yaml``: one PNG per pair under ``output_dir`` and ``grounding.json`` beside them.

    Args:
        ckpt: the pretraining ``model.pt``. datalist, dataset_dir, eval_split: the data.
        output_dir: where the PNGs and ``grounding.json`` go (the bundle's ``eval/visualize``).
        num_samples: pairs to render (demo: the first ones that have findings).
        indices: explicit positions in the split to render instead ('3,7' or [3, 7]).
        num_words: attention panels per figure. grounding_samples: demo pairs the grounding number
            is measured on (-1: every pair of the split that has findings).
        image_size: as in training. batch_size, num_workers, device, max_length: as named.
        dpi: of the PNGs. png_colors: palette size of the PNGs (0: full RGB).
    """

    def __init__(self, ckpt: str, datalist: str, dataset_dir: str, output_dir: str, eval_split: str = "test",
                 num_samples: int = 4, indices: Any = "", num_words: int = 6, grounding_samples: int = -1,
                 image_size: int = 64, batch_size: int = 32, num_workers: int = 0, device: str = "cpu",
                 max_length: int = 128, dpi: int = 80, png_colors: int = 256) -> None:
        self.ckpt, self.datalist, self.dataset_dir, self.output_dir = ckpt, datalist, dataset_dir, output_dir
        self.eval_split = str(eval_split)
        self.num_samples = int(num_samples)
        self.indices = _parse_indices(indices)
        self.num_words = int(num_words)
        self.grounding_samples = int(grounding_samples)
        self.image_size, self.batch_size, self.num_workers = int(image_size), int(batch_size), int(num_workers)
        self.device = torch.device(device)
        self.max_length, self.dpi, self.png_colors = int(max_length), int(dpi), int(png_colors)

    def run(self) -> dict[str, Any]:
        model, tokenizer, items = _load(self.ckpt, self.datalist, self.dataset_dir, self.eval_split, self.device)
        header = _header(model, self.ckpt, self.eval_split, self.image_size)
        common = dict(image_size=self.image_size, batch_size=self.batch_size, device=self.device,
                      max_length=self.max_length, num_workers=self.num_workers)
        grounding, _ = _grounding(model, tokenizer, items, header, self.grounding_samples, **common)
        chosen = _select(items, self.num_samples, self.indices)
        records = collect_evidence(model, tokenizer, [items[i] for i in chosen], **common)
        add_finding_masks(records, self.image_size)
        paths = []
        for position, record in zip(chosen, records):
            stem = os.path.splitext(os.path.basename(record["item"]["image"]))[0]
            name = f"{self.eval_split}_{position:04d}_{stem}.png"
            switches = f" (srm={header['srm']}, irm={header['irm']})" if header["objective"] == "reclf" else ""
            title = (f"{header['objective']}{switches}  ·  "
                     f"{os.path.basename(os.path.dirname(os.path.dirname(header['checkpoint'])))}/models/"
                     f"{os.path.basename(self.ckpt)}  ·  {self.eval_split}[{position}] {stem}")
            if record.get("score") is not None:
                title += f"  ·  S_local={record['score']:.3f}"
            paths.append(render_record(record, os.path.join(self.output_dir, name), self.num_words, self.dpi, title,
                                       self.png_colors))
        grounding["figures"] = [os.path.basename(p) for p in paths]
        grounding = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in grounding.items()}
        out = os.path.join(self.output_dir, "grounding.json")
        write_json(grounding, out)
        logger.info("wrote %d figure(s) and %s", len(paths), out)
        print(json.dumps({k: v for k, v in grounding.items() if k != "figures"}, indent=2))
        return grounding
