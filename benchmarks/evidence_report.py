"""Aggregation, markdown tables, the curve plot and the output files of :mod:`benchmarks.evidence`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.ablation import ARM_LABELS, LATERAL_FINDINGS
from benchmarks.report import _finite, _rounded, aggregate, format_cell

TABLE = [("side/auroc", "finding×side AUROC"), ("zs/auroc_mean", "zero-shot AUROC"), ("grounding", "grounding"),
         ("grounding_uniform", "grounding chance"), ("side_grounding", "side-word grounding"),
         ("probe/r2", "probe R² (m→centroid)"), ("srm/own_mass", "SRM side→own finding"),
         ("srm/other_mass", "SRM side→other finding"), ("srm/chance", "SRM chance"), ("irm/finding", "IRM finding"),
         ("irm/side", "IRM side"), ("irm/filler", "IRM filler")]
PLOTS = [("side/auroc", "finding × side AUROC (chance 0.5)", 0.5), ("zs/auroc_mean", "demo zero-shot AUROC", 0.5),
         ("grounding", "grounding (dashed: chance)", "grounding_uniform"), ("probe/r2", "probe R²: m → attended centroid", None),
         ("srm/own_mass", "SRM: side word → its finding (dashed: chance)", "srm/chance"),
         ("irm/finding", "IRM β×T: finding (solid) / filler (dotted)", 1.0)]


def summarise_curves(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{arm: {"steps": [...], "epochs": [...], "metrics": {key: [aggregate per epoch]}, "pretrain_*"}}."""
    out: dict[str, dict[str, Any]] = {}
    for arm, runs in results.items():
        epochs = sorted({int(e) for r in runs for e in r["curve"]})
        keys = sorted({k for r in runs for c in r["curve"].values() for k, v in c.items() if _finite(v) is not None})
        metrics = {k: [aggregate([r["curve"].get(str(e), {}).get(k) for r in runs]) for e in epochs] for k in keys}
        steps = [aggregate([r["curve"].get(str(e), {}).get("step") for r in runs])["mean"] for e in epochs]
        out[arm] = {"epochs": epochs, "steps": steps, "metrics": metrics, "seeds": [r["seed"] for r in runs],
                    "pretrain_wall_min": aggregate([r["pretrain"]["wall_s"] / 60 for r in runs]),
                    "pretrain_cpu_min": aggregate([r["pretrain"]["cpu_s"] / 60 for r in runs])}
    return out


def summarise_final(results: Mapping[str, Sequence[Mapping[str, Any]]], split: str) -> dict[str, dict[str, Any]]:
    """:func:`summarise_curves` of the runs' last snapshot on ``split`` (the final table; arms
    without it are left out)."""
    finals: dict[str, list[dict[str, Any]]] = {}
    for arm, runs in results.items():
        for r in runs:
            metrics = r.get("final", {}).get(split)
            if metrics:
                last = max(r["curve"], key=int) if r["curve"] else "0"
                finals.setdefault(arm, []).append({"seed": r["seed"], "pretrain": r["pretrain"], "curve": {last: metrics}})
    return summarise_curves(finals)


def _at(s: Mapping[str, Any], epoch: int | None) -> int:
    """Index of ``epoch`` in an arm's evaluated epochs (None or not evaluated: the last one)."""
    return s["epochs"].index(epoch) if epoch in s["epochs"] else len(s["epochs"]) - 1


def final_table(summary: Mapping[str, Mapping[str, Any]], digits: int = 3, epoch: int | None = None) -> str:
    """Markdown: one row per arm, the metrics of :data:`TABLE` at ``epoch`` (default, or where
    an arm has not reached it: its last evaluated step)."""
    lines = ["| arm | step | " + " | ".join(t for _, t in TABLE) + " | pretrain CPU min |",
             "|---|---|" + "---|" * (len(TABLE) + 1)]
    for arm, s in summary.items():
        if not s["epochs"]:
            continue
        i = _at(s, epoch)
        cells = [format_cell(s["metrics"][k][i], digits) if k in s["metrics"] else "—" for k, _ in TABLE]
        n = s["metrics"]["side/auroc"][i]["n"] if "side/auroc" in s["metrics"] else len(s["seeds"])
        lines.append(f"| {ARM_LABELS.get(arm, arm)} (n={n}) | {s['steps'][i]:.0f} | " + " | ".join(cells)
                     + f" | {format_cell(s['pretrain_cpu_min'], 1)} |")
    return "\n".join(lines) + "\n"


def per_finding_table(summary: Mapping[str, Mapping[str, Any]], epoch: int | None = None) -> str:
    """Markdown: the finding × side AUROC per lateral finding at ``epoch`` (as :func:`final_table`)."""
    lines = ["| arm | step | " + " | ".join(LATERAL_FINDINGS) + " | mean |", "|---|---|" + "---|" * (len(LATERAL_FINDINGS) + 1)]
    for arm, s in summary.items():
        if not s["epochs"]:
            continue
        i = _at(s, epoch)
        cells = [format_cell(s["metrics"][f"side/{f}"][i], 2) if f"side/{f}" in s["metrics"] else "—" for f in LATERAL_FINDINGS]
        cells.append(format_cell(s["metrics"]["side/auroc"][i], 3) if "side/auroc" in s["metrics"] else "—")
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {s['steps'][i]:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_table(summary: Mapping[str, Mapping[str, Any]], key: str = "side/auroc", digits: int = 3) -> str:
    """Markdown: ``key`` at every evaluated step (columns: the steps of the longest curve), then the
    per-seed values at the last step."""
    steps = max((s["steps"] for s in summary.values()), key=len, default=[])
    lines = ["| arm | " + " | ".join(f"@{x:.0f}" for x in steps) + " | seeds @last |", "|---|" + "---|" * (len(steps) + 1)]
    for arm, s in summary.items():
        aggs = s["metrics"].get(key)
        if not aggs:
            continue
        cells = [format_cell(a, digits) for a in aggs] + ["—"] * (len(steps) - len(aggs))
        seeds = ", ".join("—" if v is None else f"{v:.{digits}f}" for v in aggs[-1]["values"])
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def plot_curves(summary: Mapping[str, Mapping[str, Any]], path: str, title: str) -> None:
    """Six panels (:data:`PLOTS`) against steps, mean ± std over seeds, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=80)
    for ax, (key, label, ref) in zip(axes.flat, PLOTS):
        for n, (arm, s) in enumerate(summary.items()):
            if key not in s["metrics"]:
                continue
            color = f"C{n}"
            xs = [x for x, a in zip(s["steps"], s["metrics"][key]) if a["mean"] is not None]
            aggs = [a for a in s["metrics"][key] if a["mean"] is not None]
            means = [a["mean"] for a in aggs]
            stds = [a["std"] or 0.0 for a in aggs]
            ax.plot(xs, means, marker="o", ms=3, color=color, label=ARM_LABELS.get(arm, arm))
            ax.fill_between(xs, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)], color=color,
                            alpha=0.15)
            if isinstance(ref, str) and ref in s["metrics"]:
                ax.plot(xs, [a["mean"] for a in s["metrics"][ref][: len(xs)]], ls="--", color=color, lw=0.8)
            if key == "irm/finding" and "irm/filler" in s["metrics"]:
                ax.plot(xs, [a["mean"] for a in s["metrics"]["irm/filler"][: len(xs)]], ls=":", color=color)
        if isinstance(ref, float):
            ax.axhline(ref, color="gray", lw=0.8, ls="--")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(settings: Mapping[str, Any], results: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str,
                  command: str, plot: bool = True, name: str = "evidence_demo",
                  merge: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``<name>.json`` / ``.md`` (/ ``.png``) under ``out_dir``; returns the JSON object. ``merge``: earlier
    outputs (see :func:`read_earlier_output`) whose arms this run does not hold are carried over as they are."""
    from custom.metrics import nan_to_none
    from custom.utils import atomic_write_text

    summary = summarise_curves(results)
    final_split = settings.get("final_split")
    final = summarise_final(results, final_split) if final_split else {}
    runs = {arm: [{"seed": r["seed"], "pretrain": r["pretrain"], "curve": r["curve"], "final": r.get("final", {})}
                  for r in rs] for arm, rs in results.items()}
    settings = dict(settings)
    for earlier in merge or ():  # arms aggregated by an earlier process of the same study
        for arm, s in earlier["summary"].items():
            if arm not in summary:
                summary[arm], runs[arm] = s, earlier["runs"][arm]
                if arm in earlier.get("final", {}):
                    final[arm] = earlier["final"][arm]
    from benchmarks.evidence import all_arms  # the arms' order (evidence imports this module)

    order = list(all_arms())
    summary = {arm: summary[arm] for arm in sorted(summary, key=order.index)}
    final = {arm: final[arm] for arm in summary if arm in final}
    settings["arms"] = list(summary)
    obj = {"command": command, "settings": settings, "summary": summary, "final": final,
           "runs": {arm: runs[arm] for arm in summary}}
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    atomic_write_text(json.dumps(_rounded(nan_to_none(obj)), indent=None, separators=(",", ":")) + "\n", base + ".json")
    header = (f"# Evidence on the demo: curves on the {settings['eval_split']} split"
              + (f", final table on the {final_split} split" if final else "") + f"\n\n`{command}`\n\n"
              f"{settings['image_size']} px, grid from {settings['image_local_layer']}, global from "
              f"{settings['image_global_layer']}, batch {settings['batch_size']}, {settings['epochs']} epochs of "
              f"{settings['demo_train']} pairs; mean ± sample std over seeds; values at the last evaluated step.\n\n")
    text = ""
    if final:
        text += (f"## The final table: {final_split} split, the last snapshot\n\n" + final_table(final)
                 + "\nFinding × side AUROC per finding:\n\n" + per_finding_table(final)
                 + "\nFinding × side AUROC per seed:\n\n" + curve_table(final)
                 + f"\n## The curves: {settings['eval_split']} split\n\n")
    text = (header + text + "Finding × side AUROC over training:\n\n" + curve_table(summary) + "\nAt the last step:\n\n"
            + final_table(summary) + "\nFinding × side AUROC per finding:\n\n" + per_finding_table(summary))
    for epoch in sorted({int(e) for e in settings["eval_epochs"]})[:-1]:  # the same step for every arm that reached it
        text += (f"\n## At epoch {epoch} (arms that did not reach it: their last step)\n\n" + final_table(summary, epoch=epoch)
                 + "\n" + per_finding_table(summary, epoch=epoch))
    atomic_write_text(text, base + ".md")
    if plot:
        plot_curves(summary, base + ".png", f"reclf learning curves, demo {settings['eval_split']} (mean ± std over seeds)")
    return obj
