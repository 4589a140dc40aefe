"""One PNG per image/report pair: the attention α of the chosen words over the image (one
colour scale), the IRM importance β of every word and the SRM attention between words
(matplotlib, Agg backend; written atomically as a palette PNG)."""

from __future__ import annotations

import os
import textwrap
from typing import Any

import numpy as np
import torch

from ....metrics.grounding import attention_share_in_mask, mask_on_grid


NOTE_CONVIRT = ("objective 'convirt' has global embeddings only: no word→region attention, no SRM, no IRM; "
                "grounding is N/A")


NOTE_GLORIA = ("objective 'gloria' has word→region attention but no IRM importance and no SRM relations "
               "(words are pooled by log-sum-exp); attention panels are ranked by the word–region similarity s_k")


MAX_WORDS_SHOWN = 80  # bar chart / heatmap rows beyond this are unreadable; the rest are cut with a note


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
