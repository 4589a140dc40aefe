"""What :mod:`benchmarks.evidence` runs on its finished runs' last snapshots: figures
(``--figures``), every downstream task (``--downstream``) and inference-time interventions on
the relation modules (``--interventions``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from benchmarks.ablation import ARM_LABELS, BUNDLES, AblationStudy, check_cache_settings
from benchmarks.report import _read_json, _rounded, _write_json, aggregate, format_cell

if TYPE_CHECKING:
    from benchmarks.evidence import EvidenceStudy

FIGURE_INDICES = "2,15,23"
"""Validation studies rendered by :func:`render_figures`: each holds two lateral findings on
opposite sides (the binding case; generator seed 0, 300 validation studies)."""


def render_figures(study: EvidenceStudy, arms: Sequence[str], out_dir: str, seed: int = 0) -> list[str]:
    """``reclf_pretrain/configs/visualize.yaml`` on the last snapshot of (arm, ``seed``) for each
    arm with word–region attention: word→region attention, IRM weights and SRM relations of the
    :data:`FIGURE_INDICES` studies of the curve split, into ``<out_dir>/evidence_visualize/<arm>/``."""
    from benchmarks.ablation import run_bundle

    written = []
    for arm in arms:
        ckpt = study.snapshot(arm, seed)
        if study.arms[arm].get("objective", "reclf") == "convirt" or not os.path.isfile(ckpt):
            continue  # no word-region attention / not trained
        target = os.path.join(out_dir, "evidence_visualize", arm)
        run_bundle("reclf_pretrain/configs/visualize.yaml", ckpt=ckpt, datalist=study.datalist,
                   dataset_dir=study.dataset_dir, eval_split=study.settings["eval_split"], indices=FIGURE_INDICES,
                   image_size=int(study.settings["image_size"]), device="cpu", visualize_dir=target,
                   bundle_root=os.path.join(BUNDLES, "reclf_pretrain"), grounding_samples=0)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------
# The downstream tasks at this budget
# --------------------------------------------------------------------------------------------


def downstream_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ablation's downstream settings at the study's budget: every task of
    :class:`benchmarks.ablation.AblationStudy` (zero-shot, probe 1/10/100 %, retrieval,
    segmentation 10/100 %) on the test split, the probes' and U-Nets' encoders stopping at the
    pretrained stage (``image_global_layer``; the random-init baseline at the same depth)."""
    keys = ("seeds", "image_size", "batch_size", "lr", "epochs", "demo_train", "demo_val", "demo_test",
            "image_local_layer", "image_global_layer")
    return dict({k: settings[k] for k in keys}, arms=["random_init", *settings["arms"]],
                probe_fractions=[0.01, 0.1, 1.0], seg_fractions=[0.1, 1.0], seg_train_samples=300, seg_batch_size=16,
                encoder_depth=settings["image_global_layer"])


def run_downstream(study: EvidenceStudy, settings: Mapping[str, Any], out_dir: str, command: str,
                   aggregate_only: bool = False, plot: bool = True,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every downstream task on the last snapshot of each (arm, seed) of ``study`` (pretrained
    first where missing), cached under ``<cache>/downstream/``; writes ``evidence_downstream_demo.*``.
    ``overrides``: of :func:`downstream_settings` (e.g. fewer label fractions)."""
    from benchmarks.ablation import write_outputs as write_ablation

    dsettings = dict(downstream_settings(settings), **(overrides or {}))
    cache = os.path.join(study.cache, "downstream")
    os.makedirs(cache, exist_ok=True)
    check_cache_settings(cache, dsettings)

    def pretrained(arm: str, seed: int) -> tuple[str, dict[str, Any]]:
        record = study.pretrain(arm, seed)
        return study.snapshot(arm, seed), {"metrics": {}, "wall_s": record["wall_s"], "cpu_s": record["cpu_s"]}

    arms = {"random_init": None, **{a: study.arms[a] for a in settings["arms"]}}
    ablation = AblationStudy("demo", cache, dsettings, study.dataset_dir, study.datalist, log=study.log, arms=arms,
                             pretrained=pretrained, compositional=False)
    if aggregate_only:
        results = {arm: [_read_json(p) for seed in dsettings["seeds"]
                         if os.path.exists(p := os.path.join(ablation.run_dir(arm, seed), "result.json"))]
                   for arm in dsettings["arms"]}
        results = {arm: runs for arm, runs in results.items() if runs}
    else:
        results = ablation.run_all()
    return write_ablation("demo", dsettings, results, out_dir, command, plot=plot, name="evidence_downstream_demo")


# --------------------------------------------------------------------------------------------
# Inference-time interventions on the relation modules
# --------------------------------------------------------------------------------------------

INTERVENTIONS = {
    "trained": "as trained",
    "uniform_irm": "IRM off at inference (uniform β over the words)",
    "no_srm": "SRM off at inference (m' = m)",
}
"""Interventions on a trained RECLF model's scorer: which relation module's output at test time
costs (or carries) the finding × side binding."""
SWITCHED_OFF = {"uniform_irm": "irm", "no_srm": "srm"}
"""Intervention -> the scorer module it sets to None."""


def intervention_scores(study: EvidenceStudy, ckpt: str, split: str) -> dict[str, Any]:
    """``side/auroc`` (and per finding) of one checkpoint as trained and under each intervention of
    :data:`INTERVENTIONS` that applies (the module must be there to switch it off): the scorer's
    ``irm`` / ``srm`` set to None is its own ``irm: false`` (uniform β) / ``srm: false`` (m' = m) path."""
    import torch

    from custom.engines.pretrained import load_pretrained
    from custom.zero_shot import PairScorer

    model, tokenizer = load_pretrained(ckpt, "cpu")
    scorer, pairs = model.scorer, PairScorer(model, tokenizer, "cpu")
    out: dict[str, Any] = {}
    for name in INTERVENTIONS:
        module = SWITCHED_OFF.get(name)
        saved = getattr(scorer, module) if module else None
        if module and saved is None:
            continue
        if module:
            setattr(scorer, module, None)
        try:
            with torch.no_grad():
                out.update({f"{name}/{k}": v for k, v in study.side_metrics(pairs, split).items()})
        finally:
            if module:
                setattr(scorer, module, saved)
    return out


def run_interventions(study: EvidenceStudy, arms: Sequence[str], out_dir: str, split: str | None = None) -> dict[str, Any]:
    """:func:`intervention_scores` of every finished run's last snapshot of the RECLF arms (cached
    as ``evals/interventions/<split>_epochNNN.json``); writes ``evidence_interventions_demo.{json,md}``."""
    from custom.utils import atomic_write_text

    split = split or study.settings["eval_split"]
    last = study.final_epoch()
    per_arm: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        if study.arms[arm].get("objective", "reclf") != "reclf" or not (study.arms[arm].get("srm", True)
                                                                      or study.arms[arm].get("irm", True)):
            continue  # nothing to switch off
        for seed in study.settings["seeds"]:
            run_dir = study.run_dir(arm, seed)
            ckpt = study.snapshot(arm, seed)
            if not os.path.isfile(ckpt):
                continue
            path = os.path.join(run_dir, "evals", "interventions", f"{split}_epoch{last:03d}.json")
            if not os.path.exists(path):
                _write_json(intervention_scores(study, ckpt, split), path)
            per_arm.setdefault(arm, []).append(dict(_read_json(path), seed=int(seed)))
    summary = {arm: {k: aggregate([r.get(k) for r in runs]) for k in sorted({k for r in runs for k in r if k != "seed"})}
               for arm, runs in per_arm.items()}
    obj = {"split": split, "epoch": last, "interventions": INTERVENTIONS, "summary": summary, "runs": per_arm}
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "evidence_interventions_demo")
    atomic_write_text(json.dumps(_rounded(obj), indent=None, separators=(",", ":")) + "\n", base + ".json")
    lines = [f"# Interventions at inference: finding × side AUROC ({split} split, last snapshot, mean ± std over seeds)\n",
             "| arm | " + " | ".join(INTERVENTIONS.values()) + " |", "|---|" + "---|" * len(INTERVENTIONS)]
    for arm, s in summary.items():
        cells = [format_cell(s[f"{name}/side/auroc"]) if f"{name}/side/auroc" in s else "—" for name in INTERVENTIONS]
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cells) + " |")
    atomic_write_text("\n".join(lines) + "\n", base + ".md")
    return obj
