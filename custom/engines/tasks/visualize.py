"""Seeing what a pretraining checkpoint learned (DESIGN §2 "Seeing it").

For each image/report pair, one PNG: the image with the word→region attention α of the most
important words overlaid (one shared colour scale), the IRM importance β of every word as a bar
chart and the SRM word→word attention as a heatmap. The tensors come from the model's own scorer
(:meth:`RECLFModel.matched_pair_details`), so the pictures show exactly what the loss computes.

On the demo data (items carry structured ``findings`` and a lesion ``mask``) it also measures
**grounding**: for each finding word of a report ("effusion", "nodule", ...), the share of its
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
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...data.datasets import PretrainDataset, image_transform, load_datalist, make_loader
from ...data.text import encode_reports, normalize_report, token_limit
from ...utils import atomic_write_text

logger = logging.getLogger("reclf")

# Surface words that name each demo finding (custom.demo's templates); negations only ever name
# findings a study does not have, so every occurrence in a report refers to a present finding.
FINDING_WORDS: dict[str, tuple[str, ...]] = {
    "opacity": ("opacity", "opacities", "consolidation"),
    "effusion": ("effusion", "effusions", "fluid"),
    "nodule": ("nodule", "nodular"),
    "pneumothorax": ("pneumothorax",),
    "atelectasis": ("atelectasis",),
    "cardiomegaly": ("cardiomegaly", "heart", "cardiac"),
}
MASK_SOURCE = (
    "demo union lesion mask; a finding's own mask is the whole union when it is the study's only finding, "
    "or the union on its side of the image (patient's left = image right) when the study's lateral findings "
    "are on opposite sides; other studies are skipped (n_skipped_ambiguous)"
)
NOTE_CONVIRT = ("objective 'convirt' has global embeddings only: no word→region attention, no SRM, no IRM; "
                "grounding is N/A")
NOTE_GLORIA = ("objective 'gloria' has word→region attention but no IRM importance and no SRM relations "
               "(words are pooled by log-sum-exp); attention panels are ranked by the word–region similarity s_k")
MAX_WORDS_SHOWN = 80  # bar chart / heatmap rows beyond this are unreadable; the rest are cut with a note


# --------------------------------------------------------------------------------------------
# words, masks and the grounding share
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


def mask_on_grid(mask: torch.Tensor | np.ndarray, grid: Sequence[int]) -> torch.Tensor:
    """Fraction of each region cell covered by ``mask``: (H, W) in [0, 1] -> (h, w) area means."""
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))
    return F.adaptive_avg_pool2d(mask[None, None], tuple(int(g) for g in grid))[0, 0]


def attention_share_in_mask(attention: torch.Tensor, mask_fraction: torch.Tensor) -> torch.Tensor:
    """Share of attention mass inside a mask: Σ_r α_r m_r / Σ_r α_r.

    Args:
        attention: (..., R) non-negative attention over R = h·w regions (row-major grid).
        mask_fraction: (R,) or (h, w): the fraction of each region inside the mask
            (:func:`mask_on_grid`); each cell's attention is spread evenly over its pixels.

    Returns:
        (...) shares in [0, 1].
    """
    m = torch.as_tensor(mask_fraction, dtype=attention.dtype).reshape(-1)
    if m.numel() != attention.shape[-1]:
        raise ValueError(f"mask has {m.numel()} grid cells, attention has {attention.shape[-1]} regions")
    return (attention * m).sum(-1) / attention.sum(-1).clamp_min(1e-12)


def demo_finding_masks(union: np.ndarray, findings: Sequence[dict[str, str]]) -> list[np.ndarray] | None:
    """Each finding's own mask from a demo study's union mask (see the module docstring).

    Args:
        union: (H, W) in [0, 1], in display orientation (patient's left on the image's right).
        findings: the item's ``findings`` (dicts with ``finding`` and ``side``).

    Returns:
        one (H, W) mask per finding, or None when the union cannot be split (or there is no finding).
    """
    if not findings:
        return None
    if len(findings) == 1:
        return [union]
    sides = [f.get("side") for f in findings]
    if not all(s in ("left", "right") for s in sides) or len(set(sides)) != len(sides):
        return None
    width = union.shape[-1]
    on_image_right = np.arange(width) >= width / 2  # the patient's left
    return [union * (on_image_right if side == "left" else ~on_image_right) for side in sides]


def finding_word_positions(words: Sequence[str], finding: str) -> list[int]:
    """Indices of the words of a report that name ``finding`` (:data:`FINDING_WORDS`)."""
    names = FINDING_WORDS.get(finding, (finding,))
    return [k for k, w in enumerate(words) if w in names]


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


def grounding_from_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The grounding numbers of records carrying ``attention`` and ``finding_masks`` (see module doc).

    Returns ``grounding`` (mean over pairs of the mean share of the pair's finding words),
    ``grounding_uniform`` (the same for uniform attention: the chance level), ``grounding/<finding>``
    and ``grounding_uniform/<finding>`` (mean over that finding's word occurrences), ``n_samples`` (pairs with ≥ 1 usable finding
    word), ``n_finding_words``, ``n_skipped_ambiguous``, and ``side_grounding``: the mean share of a
    'left'/'right' word's attention on that side of the patient (chance 0.5), over ``n_side_words``
    words of the same pairs (ambiguous ones included); values are None when nothing is measurable.
    """
    per_pair, per_pair_uniform, side_shares = [], [], []
    per_finding: dict[str, list[float]] = {}
    per_finding_uniform: dict[str, list[float]] = {}
    n_words, ambiguous = 0, 0
    for record in records:
        if "finding_masks" not in record or record.get("attention") is None:
            continue
        side_shares += _side_word_shares(record)
        if record.get("findings_ambiguous"):
            ambiguous += 1
            continue
        attention = torch.from_numpy(record["attention"]).double()
        shares, uniform = [], []
        for finding, mask, positions in record["finding_masks"]:
            fraction = mask_on_grid(mask, record["grid"]).double()
            if not positions or float(fraction.sum()) <= 0:  # unnamed, or a lesion too small to draw
                continue
            values = attention_share_in_mask(attention[positions], fraction).tolist()
            shares += values
            uniform += [float(fraction.mean())] * len(values)
            per_finding.setdefault(finding, []).extend(values)
            per_finding_uniform.setdefault(finding, []).extend([float(fraction.mean())] * len(values))
        if shares:
            per_pair.append(float(np.mean(shares)))
            per_pair_uniform.append(float(np.mean(uniform)))
            n_words += len(shares)

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {
        "grounding": mean(per_pair), "grounding_uniform": mean(per_pair_uniform), "n_samples": len(per_pair),
        "n_finding_words": n_words, "n_skipped_ambiguous": ambiguous,
        "side_grounding": mean(side_shares), "n_side_words": len(side_shares),
    }
    for name in sorted(per_finding):
        out[f"grounding/{name}"] = mean(per_finding[name])
        out[f"grounding_uniform/{name}"] = mean(per_finding_uniform[name])
    return out


def _side_word_shares(record: dict[str, Any]) -> list[float]:
    """Share of the attention of each 'left'/'right' word on that side of the patient
    (the patient's left is the image's right half); 0.5 is chance."""
    height, width = record["image"].shape
    on_image_right = np.broadcast_to(np.arange(width) >= width / 2, (height, width)).astype(np.float32)
    halves = {"left": mask_on_grid(on_image_right, record["grid"]), "right": mask_on_grid(1 - on_image_right, record["grid"])}
    attention = torch.from_numpy(record["attention"]).double()
    return [float(attention_share_in_mask(attention[k], halves[w])) for k, w in enumerate(record["words"]) if w in halves]


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
    from ...nets.factory import load_pretrained

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
def _panel_words(record: dict[str, Any], num_words: int) -> list[int]:
    """Words to show attention for: each finding's most important mention first (demo), then the
    rest by IRM importance (GLoRIA / IRM off: by word–region similarity s_k), at most ``num_words``."""
    rank = record["importance"] if record.get("irm") and record.get("importance") is not None else record["word_similarity"]
    order = [int(k) for k in np.argsort(-rank, kind="stable")]
    chosen: list[int] = []
    for _, _, positions in record.get("finding_masks", []):
        if positions:
            best = max(positions, key=lambda k: rank[k])
            if best not in chosen:
                chosen.append(best)
    chosen += [k for k in order if k not in chosen]
    return chosen[: max(1, int(num_words))]


def _word_masks(record: dict[str, Any]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for _, mask, positions in record.get("finding_masks", []):
        if mask is not None:
            out.update({k: mask for k in positions})
    return out


def _note(ax, text: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 70)), ha="center", va="center", fontsize=10,
            transform=ax.transAxes, bbox={"boxstyle": "round", "facecolor": "#f3f3f3", "edgecolor": "#999999"})


def render_record(record: dict[str, Any], path: str, num_words: int = 6, dpi: int = 80, title: str = "",
                  colors: int = 256) -> str:
    """Write one PNG for one pair (see the module docstring) and return its path.

    Top row: the image (with its finding masks outlined, demo) and the attention α of the chosen
    words, all on one colour scale (0 .. the largest α shown). Bottom: IRM importance β of every word
    (bars, in report order) and the SRM attention between words (last layer, mean over heads).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    words = record["words"]
    image = record["image"]
    extent = (0, image.shape[1], image.shape[0], 0)
    has_local = record.get("attention") is not None
    panels = _panel_words(record, num_words) if has_local else []
    shown = min(len(words), MAX_WORDS_SHOWN)
    n_cols = max(len(panels) + 1, 4)
    width = max(12.0, 1.85 * n_cols + 1.2)
    top_h = (width - 1.2) / n_cols + 0.75  # square panels plus two title lines
    has_bars = bool(record.get("irm")) and record.get("importance") is not None
    has_relations = record.get("srm_attention") is not None
    # GLoRIA has neither chart: one short note row instead of a tall empty one
    bottom_h = (max(3.5, 0.15 * shown + 1.3) if has_bars or has_relations else 0.8) if has_local else 0.0
    report = "\n".join(textwrap.wrap(record["item"]["report"], int(width * 15))[:4])
    fig = Figure(figsize=(width, top_h + bottom_h + 0.25 + 0.16 * (report.count("\n") + 2)), dpi=dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{title}\n{report}", fontsize=9, x=0.01, ha="left")
    if has_local:
        top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[top_h, bottom_h])
    else:
        top_fig, bottom_fig = fig, None
    axes = top_fig.subplots(1, n_cols) if has_local else top_fig.subplots(1, 2, width_ratios=[1.0, n_cols - 1.0])
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    masks = _word_masks(record)

    ax = axes[0]
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
    outlined = [m for _, m, _ in record.get("finding_masks", []) if m is not None]
    for mask in outlined:
        ax.contour(mask, levels=[0.5], colors="cyan", linewidths=1.0, extent=extent, origin="upper")
    ax.set_title("image" + ("\n(finding masks outlined)" if outlined else ""), fontsize=9)
    for ax in axes[len(panels) + 1:]:
        ax.axis("off")
    if not has_local:
        _note(axes[1], NOTE_CONVIRT)
        return _save(fig, path, dpi, colors)

    h, w = record["grid"]
    attention = record["attention"]
    vmax = float(max(attention[k].max() for k in panels))
    norm = Normalize(vmin=0.0, vmax=vmax)
    for ax, k in zip(axes[1:], panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
        ax.imshow(attention[k].reshape(h, w), cmap="inferno", norm=norm, alpha=0.6, extent=extent,
                  interpolation="nearest")
        label = f"'{words[k]}'"
        if record.get("irm") and record.get("importance") is not None:
            label += f"  β={record['importance'][k]:.3f}"
        else:
            label += f"  s={record['word_similarity'][k]:.2f}"
        if k in masks:
            ax.contour(masks[k], levels=[0.5], colors="cyan", linewidths=1.0, extent=extent, origin="upper")
            share = float(attention_share_in_mask(torch.from_numpy(attention[k]), mask_on_grid(masks[k], (h, w))))
            label += f"\n{share:.0%} of α in its mask"
        ax.set_title(label, fontsize=9)
    top_fig.colorbar(ScalarMappable(norm=norm, cmap="inferno"), ax=list(axes), fraction=0.02, pad=0.01).set_label(
        f"attention α, one scale\n({h}×{w} regions)", fontsize=8)

    if not has_bars and not has_relations:
        _note(bottom_fig.subplots(1, 1), NOTE_GLORIA if record["objective"] == "gloria" else
              "IRM and SRM are off in this checkpoint: uniform word weights, no relations between matchings")
        return _save(fig, path, dpi, colors)
    ax_bar, ax_srm = bottom_fig.subplots(1, 2, width_ratios=[1.0, 1.3])
    labels = words[:shown]
    size = 8 if shown <= 30 else 6.5 if shown <= 55 else 5
    cut = f" (first {shown} of {len(words)} words)" if shown < len(words) else ""
    if has_bars:
        beta = record["importance"][:shown]
        bar_colors = ["tab:orange" if k in panels else "tab:blue" for k in range(shown)]
        ax_bar.barh(np.arange(shown), beta, color=bar_colors)
        ax_bar.axvline(1.0 / len(words), color="gray", linestyle="--", linewidth=0.8, label="uniform 1/T")
        ax_bar.set_yticks(np.arange(shown), labels, fontsize=size)
        ax_bar.set_ylim(shown - 0.5, -0.5)
        ax_bar.set_xlabel("IRM importance β (sums to 1; orange = shown above)", fontsize=8)
        ax_bar.legend(fontsize=7, loc="lower right")
        ax_bar.set_title("IRM: importance of each word" + cut, fontsize=9)
        ax_bar.tick_params(axis="x", labelsize=7)
    else:
        _note(ax_bar, NOTE_GLORIA if record["objective"] == "gloria" else "IRM is off in this checkpoint "
              "(irm: false): every valid word has the same weight 1/T")
    srm = record.get("srm_attention")
    if has_relations:
        relation = srm.mean(0)[:shown, :shown]
        # its own colour range (printed on the bar): rows are softmaxes over T words, so values
        # sit near 1/T and a 0-based scale would hide the structure
        image_srm = ax_srm.imshow(relation, cmap="viridis", vmin=float(relation.min()), vmax=float(relation.max()),
                                  interpolation="nearest")
        ax_srm.set_xticks(np.arange(shown), labels, rotation=90, fontsize=size)
        ax_srm.set_yticks(np.arange(shown), labels, fontsize=size)
        ax_srm.set_title(f"SRM: word→word attention (last layer, mean of {srm.shape[0]} heads; row attends to column)"
                         + cut, fontsize=9)
        bottom_fig.colorbar(image_srm, ax=ax_srm, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    else:
        _note(ax_srm, NOTE_GLORIA if record["objective"] == "gloria" else "SRM is off in this checkpoint "
              "(srm: false): matchings are not related to each other")
    return _save(fig, path, dpi, colors)


def _save(fig, path: str, dpi: int, colors: int = 256) -> str:
    """Write ``fig`` atomically; with ``colors`` > 0 as a palette PNG of that many colours (flat
    plot colours and an 8-bit image survive 256 colours unchanged to the eye, at ~1/4 of the bytes)."""
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        if int(colors) > 0:
            with Image.open(tmp) as img:
                rgb = img.convert("RGB")
            rgb.quantize(colors=min(int(colors), 256), method=Image.Quantize.FASTOCTREE,
                         dither=Image.Dither.NONE).save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
        atomic_write_text(json.dumps(grounding, indent=2), out)
        logger.info("wrote %d figure(s) and %s", len(paths), out)
        print(json.dumps({k: v for k, v in grounding.items() if k != "figures"}, indent=2))
        return grounding
