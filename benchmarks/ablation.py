"""Ablation study: ConVIRT, GLoRIA pooling, RECLF without SRM / IRM, full RECLF and a random-init
baseline, pretrained under the same budget and seeds and scored on the paper's four downstream tasks.

    python -m benchmarks.ablation --dataset demo
    python -m benchmarks.ablation --dataset covid_notes --root ../shared/data/cxr-notes

Every step drives a bundle config in-process with overrides (``monai.bundle.run``), so the study
measures exactly what a user runs:

- pretraining: ``reclf_pretrain/configs/train.yaml`` with ``objective`` / ``srm`` / ``irm``
  (arms in :data:`ARMS`); the random-init arm has no pretraining and only image-side tasks;
- zero-shot: ``reclf_cls/configs/zero_shot.yaml`` with the dataset's prompt file;
- compositional zero-shot (demo only): finding x side. From the validation + test studies that
  carry two lateral findings on opposite sides (e.g. a left effusion and a right opacity) a
  two-class set per lateral finding F asks "left F" vs "right F" with the demo prompt templates
  of F, the side slot fixed. The other side always carries a different finding, so the words
  "left" and "right" both fit the image: only a model that binds F to its side beats chance;
- linear probe: ``reclf_cls/configs/train.yaml`` at each label fraction (the label subset drawn
  with the run's seed);
- retrieval: ``reclf_cls/configs/retrieval.yaml``;
- grounding (demo only, arms with word-region attention): ``custom.visualize.grounding_score``, the
  share of a finding word's attention that falls inside that finding's lesion (chance: the mask's
  area fraction, ``grounding/grounding_uniform`` in the JSON);
- segmentation: ``reclf_seg/configs/train.yaml`` (+ ``evaluate.yaml``) at each label fraction with a
  fixed budget of training images (``train_samples``).

Runs are cached: one folder per (dataset, arm, seed) under ``--cache`` (default
``.cache/ablation/<dataset>``), each finished stage writing ``stages/<stage>.json`` atomically and a
finished run ``result.json``; a rerun skips what is there, so an interrupted study resumes. Each
stage records its wall time and CPU time (``time.process_time``: on a shared machine the wall time
is inflated by the other load, CPU seconds / threads is what it would take on idle cores).

Outputs: ``<out>/ablation_<dataset>.json`` (per arm and metric: mean, sample std over seeds, n,
per-seed values; the settings; wall times), ``.md`` (the table) and ``.png`` (a bar plot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from benchmarks.report import (  # noqa: F401 (ablation.aggregate etc.: the names tests and evidence use)
    BOOKKEEPING, _finite, _read_json, _rounded, _write_json, aggregate, format_cell, is_result_key, summarise,
)
from benchmarks import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = os.path.join(REPO, "bundles")
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")

ARMS: dict[str, dict[str, Any] | None] = {
    "random_init": None,  # no pretraining: image-side tasks from a random-init encoder
    "convirt": {"objective": "convirt"},
    "gloria": {"objective": "gloria"},
    "reclf_no_srm_no_irm": {"objective": "reclf", "srm": False, "irm": False},
    "reclf_no_srm": {"objective": "reclf", "srm": False},
    "reclf_no_irm": {"objective": "reclf", "irm": False},
    "reclf": {"objective": "reclf"},
}
"""Arm name -> pretraining overrides (``None``: no pretraining)."""

ARM_LABELS = {
    "random_init": "random init", "convirt": "ConVIRT (global)", "gloria": "GLoRIA pooling",
    "reclf_no_srm_no_irm": "RECLF − SRM − IRM", "reclf_no_srm": "RECLF − SRM", "reclf_no_irm": "RECLF − IRM", "reclf": "RECLF (full)",
    "reclf_srm_local": "RECLF + SRM word-distance prior", "reclf_sharp": "RECLF, attention scale 16",
}

LATERAL_FINDINGS = ("opacity", "effusion", "nodule", "pneumothorax", "atelectasis")


def default_settings(dataset: str) -> dict[str, Any]:
    """Study defaults per dataset (3 seeds, 64 px, batch 16, every arm).

    demo: 400 training pairs (generator seed 0), 120 validation and 240 test studies, 2
    pretraining epochs (50 steps); covid_notes: its training pairs with notes (109), 8 epochs
    (48 steps). Segmentation at 100% of the masks only (``--seg_fractions "[0.1,1.0]"`` adds 10%),
    ``seg_train_samples`` training images seen at each label fraction.
    """
    common = {
        "seeds": [0, 1, 2], "image_size": 64, "batch_size": 16, "lr": 1.0e-3,
        "probe_fractions": [0.01, 0.1, 1.0], "seg_fractions": [1.0], "seg_train_samples": 300,
        "seg_batch_size": 16, "arms": list(ARMS),
    }
    if dataset == "demo":
        return dict(common, epochs=2, demo_train=400, demo_val=120, demo_test=240)
    if dataset == "covid_notes":
        return dict(common, epochs=8)
    raise ValueError(f"--dataset: expected demo or covid_notes, got {dataset!r}")


RUN_INDEPENDENT = ("seeds", "arms")
"""Settings a cache may be reused across (they choose which runs, not what a run does)."""


def check_cache_settings(cache: str, settings: Mapping[str, Any]) -> None:
    """Refuse to mix runs of different settings in one cache: ``cache/settings.json`` records the
    first study's settings (all but :data:`RUN_INDEPENDENT`); a differing rerun is an error."""
    path = os.path.join(cache, "settings.json")
    mine = {k: v for k, v in settings.items() if k not in RUN_INDEPENDENT}
    if os.path.exists(path):
        saved = _read_json(path)
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        if diff:
            raise ValueError(f"{path}: the cached runs used other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}; "
                             f"now {', '.join(f'{k}={mine.get(k)!r}' for k in diff)}): pass another --cache or delete it")
        return
    _write_json(mine, path)


# --------------------------------------------------------------------------------------------
# Aggregation and the table
# --------------------------------------------------------------------------------------------


def markdown_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], columns: Sequence[tuple[str, str]],
                   digits: int = 3) -> str:
    """:func:`benchmarks.report.markdown_table` with the arms' names (:data:`ARM_LABELS`)."""
    return report.markdown_table(summary, columns, digits, labels=ARM_LABELS)


def table_columns(dataset: str, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric key, column title) of the markdown table, in order."""
    if dataset == "demo":
        # side: AUROC, not argmax accuracy: a model may rank left/right images correctly while one
        # side's prompts score higher on every image (accuracy = the share of that side)
        cols = [("zs/auroc_mean", "zero-shot AUROC"), ("side/auroc", "finding×side zero-shot AUROC"),
                ("grounding/grounding", "grounding")]
        probe_key, probe_title = "auroc_mean", "AUROC"
    else:
        cols = [("zs/acc", "zero-shot acc"), ("zs/auroc_mean", "zero-shot AUROC")]
        probe_key, probe_title = "acc", "acc"
    for fraction in settings["probe_fractions"]:
        cols.append((f"lp{_pct(fraction)}/{probe_key}", f"linear {probe_title} {_pct(fraction)}%"))
    cols += [("ret/i2t_recall@5", "I→T R@5"), ("ret/t2i_recall@5", "T→I R@5")]
    for fraction in settings["seg_fractions"]:
        cols.append((f"seg{_pct(fraction)}/dice", f"seg Dice {_pct(fraction)}%"))
    cols.append(("time/pretrain_wall_min", "pretrain wall min"))
    return cols


def _pct(fraction: float) -> str:
    value = 100.0 * float(fraction)
    return f"{value:g}"


def plot_summary(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], columns: Sequence[tuple[str, str]],
                 path: str, title: str) -> None:
    """Grouped bars (metric groups, one bar per arm) with ± std error bars, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_cols = [(k, t) for k, t in columns if not k.startswith("time/")]
    arms = list(summary)
    width = 0.8 / max(len(arms), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(metric_cols)), 3.6), dpi=90)
    for a, arm in enumerate(arms):
        means = [summary[arm].get(k, {}).get("mean") for k, _ in metric_cols]
        stds = [summary[arm].get(k, {}).get("std") or 0.0 for k, _ in metric_cols]
        xs = [i + (a - (len(arms) - 1) / 2) * width for i in range(len(metric_cols))]
        heights = [m if m is not None else 0.0 for m in means]
        ax.bar(xs, heights, width, yerr=stds, capsize=2, label=ARM_LABELS.get(arm, arm))
    ax.set_xticks(range(len(metric_cols)))
    ax.set_xticklabels([t for _, t in metric_cols], rotation=25, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=3, loc="upper left")
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Cache helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _timed(record: dict[str, float]) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    record["wall_s"] = time.perf_counter() - wall
    record["cpu_s"] = time.process_time() - cpu


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def prepare_demo(cache: str, settings: Mapping[str, Any]) -> tuple[str, str]:
    """Generate the demo (seed 0) at the study's image size into ``cache/data``; (dataset_dir, datalist)."""
    from custom.demo import generate_demo

    data_dir = os.path.join(cache, "data")
    datalist = os.path.join(data_dir, "datalist.json")
    if not os.path.exists(datalist):
        generate_demo(data_dir, n_train=settings["demo_train"], n_val=settings["demo_val"],
                      n_test=settings["demo_test"], image_size=settings["image_size"], seed=0)
    return data_dir, datalist


def prepare_covid_notes(cache: str, root: str, datalist: str | None) -> tuple[str, str]:
    """``python -m custom prepare covid_notes --root ROOT --out cache/datalist.json`` (in-process),
    unless an existing ``datalist`` is given; (dataset_dir, datalist)."""
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root!r}: the cxr-notes folder (e.g. ../shared/data/cxr-notes) is missing")
    if datalist:
        if not os.path.isfile(datalist):
            raise FileNotFoundError(f"--datalist {datalist!r} does not exist")
        return root, os.path.abspath(datalist)
    out = os.path.join(cache, "datalist.json")
    if not os.path.exists(out):
        from custom.datasets import preparer

        os.makedirs(cache, exist_ok=True)
        preparer("covid_notes")(root=root, out=out, quiet=True)
    return root, out


def side_tasks(datalist: str, cache: str, prompts_file: str, splits: Sequence[str] = ("validation", "test"),
               folder: str = "side_tasks") -> dict[str, tuple[str, str]]:
    """The compositional finding × side sets of the demo: {finding: (datalist, prompts)}.

    Rows: ``splits`` (default validation + test) studies with two lateral findings on opposite sides, one row per
    lateral finding F of such a study, label 0 = F on the patient's left, 1 = right
    (``label_names`` ``["left F", "right F"]``). Prompts: the demo prompt file's templates of F
    with ``side`` fixed to one value per class (its bilateral ``phrases`` and ``negative`` left out).
    """
    import yaml

    content = _read_json(datalist)
    base = os.path.dirname(os.path.abspath(datalist))
    with open(prompts_file, encoding="utf-8") as f:
        prompts = yaml.safe_load(f)
    out: dict[str, tuple[str, str]] = {}
    folder = os.path.join(cache, folder)
    os.makedirs(folder, exist_ok=True)
    for finding in LATERAL_FINDINGS:
        rows = []
        for split in splits:
            for item in content.get(split, []):
                lateral = [f for f in item.get("findings", []) if f.get("side") in ("left", "right")]
                if len(lateral) < 2 or len({f["side"] for f in lateral}) < 2:
                    continue
                for f in lateral:
                    if f["finding"] == finding:
                        image = item["image"] if os.path.isabs(item["image"]) else os.path.join(base, item["image"])
                        rows.append({"image": image, "labels": 0 if f["side"] == "left" else 1,
                                     "patient_id": item.get("patient_id", ""), "report": item.get("report", "")})
        if len({r["labels"] for r in rows}) < 2:
            continue  # a tiny demo may lack a side of this finding: no two-class task
        spec = prompts["classes"][finding]
        slots = {k: v for k, v in spec.items() if k not in ("phrases", "templates", "negative")}
        classes = {f"{side} {finding}": dict(slots, templates=list(spec["templates"]), side=[side])
                   for side in ("left", "right")}
        task_list = os.path.join(folder, f"{finding}.json")
        task_prompts = os.path.join(folder, f"{finding}.yaml")
        _write_json({"training": [], "validation": [], "test": rows,
                     "label_names": [f"left {finding}", f"right {finding}"]}, task_list)
        from custom.utils import atomic_write_text

        atomic_write_text(yaml.safe_dump({"description": f"{finding}: left vs right", "classes": classes},
                                         sort_keys=False), task_prompts)
        out[finding] = (task_list, task_prompts)
    return out


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


def run_bundle(config: str | list[str], **overrides: Any) -> Any:
    """``monai.bundle.run`` of configs under ``bundles/`` (paths relative to it), in-process."""
    from monai.bundle import run

    files = [config] if isinstance(config, str) else list(config)
    paths = [c if os.path.isabs(c) else os.path.join(BUNDLES, c) for c in files]
    return run(config_file=paths if len(paths) > 1 else paths[0], **overrides)


class AblationStudy:
    """Every (arm, seed) run of one dataset, cached under ``cache``.

    Args:
        dataset: ``demo`` | ``covid_notes``. cache: the cache folder of this dataset.
        settings: :func:`default_settings` merged with command-line overrides.
        dataset_dir, datalist: the data (from :func:`prepare_demo` / :func:`prepare_covid_notes`).
        log: progress messages (default: print).
        arms: arm name -> pretraining overrides (None: no pretraining); default :data:`ARMS`.
        pretrained: (arm, seed) -> (``model.pt`` of a pretraining done elsewhere, its stage record
            ``{"metrics", "wall_s", "cpu_s"}``) instead of the ``pretrain`` stage here
            (:mod:`benchmarks.evidence` hands over its runs' last snapshots).
        compositional: run the demo's finding × side and grounding stages (demo only).

    ``settings["encoder_depth"]`` (optional): the deepest ResNet stage of the probes' and U-Nets'
    encoders (``None``: the stages the checkpoint trained, ``layer4`` at random init).
    """

    def __init__(self, dataset: str, cache: str, settings: Mapping[str, Any], dataset_dir: str, datalist: str,
                 log: Callable[[str], None] = print, arms: Mapping[str, dict[str, Any] | None] = ARMS,
                 pretrained: Callable[[str, int], tuple[str, dict[str, Any]]] | None = None,
                 compositional: bool = True) -> None:
        self.arms = dict(arms)
        unknown = [a for a in settings["arms"] if a not in self.arms]
        if unknown:
            raise ValueError(f"--arms: unknown arm(s) {unknown}; choose from {list(self.arms)}")
        self.dataset, self.cache, self.settings = dataset, os.path.abspath(cache), dict(settings)
        self.dataset_dir, self.datalist, self.log = os.path.abspath(dataset_dir), os.path.abspath(datalist), log
        self.prompts = os.path.join(BUNDLES, "reclf_cls", "configs", "prompts", f"{dataset}.yaml")
        self.side = side_tasks(self.datalist, self.cache, self.prompts) if dataset == "demo" and compositional else {}
        self.pretrained = pretrained
        size = int(settings["image_size"])
        self.decode_cache = os.path.join(self.cache, f"decoded_{size}px")  # PersistentDataset per bundle

    def _common(self) -> dict[str, Any]:
        return {"dataset_dir": self.dataset_dir, "datalist": self.datalist, "image_size": int(self.settings["image_size"]),
                "device": "cpu", "amp": False, "num_workers": 0}

    def run_dir(self, arm: str, seed: int) -> str:
        return os.path.join(self.cache, arm, f"seed{int(seed)}")

    def _stage(self, run_dir: str, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A cached stage: ``stages/<name>.json`` holds its metrics + times, else ``compute()`` runs."""
        marker = os.path.join(run_dir, "stages", f"{name}.json")
        if os.path.exists(marker):
            return _read_json(marker)
        self.log(f"[ablation] {self.dataset} {os.path.relpath(run_dir, self.cache)}: {name} ...")
        times: dict[str, float] = {}
        with _timed(times):
            metrics = compute()
        record = {"metrics": metrics, **times}
        _write_json(record, marker)
        self.log(f"[ablation] {self.dataset} {os.path.relpath(run_dir, self.cache)}: {name} done in "
                 f"{times['wall_s']:.0f} s wall / {times['cpu_s']:.0f} s CPU")
        return record

    # ---- stages ----------------------------------------------------------------------------
    def _pretrain(self, arm: str, seed: int, out: str) -> dict[str, Any]:
        if os.path.isdir(out):
            shutil.rmtree(out)  # an interrupted pretraining restarts from scratch
        run_bundle("reclf_pretrain/configs/train.yaml", output_dir=out, epochs=int(self.settings["epochs"]),
                   batch_size=int(self.settings["batch_size"]), lr=float(self.settings["lr"]), seed=int(seed),
                   val_interval=10_000, cache_dir=os.path.join(self.decode_cache, "pretrain"),
                   **self.arms[arm], **self._common())
        history = os.path.join(out, "logs", "loss_history.json")
        if os.path.isfile(history):  # the loss curve, kept: _tidy removes logs/
            return {f"epoch{e['epoch']}/{k}": v for e in _read_json(history)["epochs"]
                    for k, v in e.items() if k.startswith("loss")}
        return {}

    def _zero_shot(self, ckpt: str, out: str, datalist: str | None = None, prompts: str | None = None) -> dict[str, Any]:
        overrides = dict(self._common(), datalist=datalist or self.datalist)
        run_bundle("reclf_cls/configs/zero_shot.yaml", pretrained_ckpt=ckpt, output_dir=out,
                   prompts=prompts or self.prompts, bundle_root=os.path.join(BUNDLES, "reclf_cls"), **overrides)
        return _read_json(os.path.join(out, "eval", "zero_shot.json"))

    def _side(self, ckpt: str, out: str) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        accs, aurocs = [], []
        for finding, (task_list, task_prompts) in self.side.items():
            result = self._zero_shot(ckpt, os.path.join(out, finding), task_list, task_prompts)
            metrics[f"{finding}/acc"], metrics[f"{finding}/auroc"] = result.get("acc"), result.get("auroc_mean")
            metrics[f"{finding}/n"] = result.get("n_samples")
            accs.append(_finite(result.get("acc")))
            aurocs.append(_finite(result.get("auroc_mean")))
        metrics["acc"] = aggregate(accs)["mean"]
        metrics["auroc"] = aggregate(aurocs)["mean"]
        return metrics

    def _grounding(self, ckpt: str) -> dict[str, Any]:
        """Share of a finding word's attention inside its lesion (``custom.visualize.grounding_score``,
        demo test split); empty when that module is not there."""
        try:
            from custom.visualize import grounding_score
        except ImportError:
            return {}
        result = grounding_score(ckpt, self.datalist, self.dataset_dir, split="test",
                                 image_size=int(self.settings["image_size"]), device="cpu")
        return {k: v for k, v in result.items() if k in ("grounding", "grounding_uniform", "n_samples")}

    def _retrieval(self, ckpt: str, out: str) -> dict[str, Any]:
        run_bundle("reclf_cls/configs/retrieval.yaml", pretrained_ckpt=ckpt, output_dir=out, prompts=self.prompts,
                   bundle_root=os.path.join(BUNDLES, "reclf_cls"), **self._common())
        return _read_json(os.path.join(out, "eval", "retrieval.json"))

    def _probe(self, ckpt: str, seed: int, fraction: float, out: str) -> dict[str, Any]:
        run_bundle("reclf_cls/configs/train.yaml", pretrained_ckpt=ckpt, output_dir=out, label_fraction=float(fraction),
                   label_seeds=[int(seed)], seed=int(seed), bundle_root=os.path.join(BUNDLES, "reclf_cls"),
                   encoder_depth=self.settings.get("encoder_depth"),
                   cache_dir=os.path.join(self.decode_cache, "probe"), **self._common())
        result = _read_json(os.path.join(out, "eval", "linear_probe.json"))
        return {k: v for k, v in result.items() if not isinstance(v, (dict, list)) and not k.startswith("std/")}

    def _seg(self, ckpt: str, seed: int, fraction: float, out: str) -> dict[str, Any]:
        common = self._common()
        run_bundle("reclf_seg/configs/train.yaml", pretrained_ckpt=ckpt, output_dir=out, label_fraction=float(fraction),
                   label_seed=int(seed), seed=int(seed), train_samples=int(self.settings["seg_train_samples"]),
                   batch_size=int(self.settings["seg_batch_size"]), bundle_root=os.path.join(BUNDLES, "reclf_seg"),
                   encoder_depth=self.settings.get("encoder_depth"),
                   cache_dir=os.path.join(self.decode_cache, "seg"), **common)
        common.pop("image_size")  # evaluate.yaml reads it from the segmenter's model.json
        run_bundle("reclf_seg/configs/evaluate.yaml", output_dir=out, bundle_root=os.path.join(BUNDLES, "reclf_seg"),
                   cache_dir=os.path.join(self.decode_cache, "seg"), **common)
        return _read_json(os.path.join(out, "eval", "metrics.json"))

    # ---- one run ---------------------------------------------------------------------------
    def run_one(self, arm: str, seed: int) -> dict[str, Any]:
        """All stages of (arm, seed); cached. Returns ``result.json``: flat ``metrics`` + ``stages`` times."""
        run_dir = self.run_dir(arm, seed)
        done = os.path.join(run_dir, "result.json")
        if os.path.exists(done):
            self._tidy(run_dir)
            return _read_json(done)
        stages: dict[str, dict[str, Any]] = {}
        ckpt = ""
        if self.arms[arm] is not None:
            if self.pretrained is not None:
                ckpt, stages["pretrain"] = self.pretrained(arm, int(seed))
            else:
                pre_dir = os.path.join(run_dir, "pretrain")
                stages["pretrain"] = self._stage(run_dir, "pretrain", lambda: self._pretrain(arm, seed, pre_dir))
                ckpt = os.path.join(pre_dir, "models", "model.pt")
            stages["zs"] = self._stage(run_dir, "zs", lambda: self._zero_shot(ckpt, os.path.join(run_dir, "zs")))
            if self.side:
                stages["side"] = self._stage(run_dir, "side", lambda: self._side(ckpt, os.path.join(run_dir, "side")))
            if self.side and self.arms[arm].get("objective", "reclf") != "convirt":  # ConVIRT has no word-region attention
                stages["grounding"] = self._stage(run_dir, "grounding", lambda: self._grounding(ckpt))
            stages["ret"] = self._stage(run_dir, "ret", lambda: self._retrieval(ckpt, os.path.join(run_dir, "ret")))
        for fraction in self.settings["probe_fractions"]:
            name = f"lp{_pct(fraction)}"
            stages[name] = self._stage(run_dir, name, lambda f=fraction, n=name: self._probe(ckpt, seed, f, os.path.join(run_dir, n)))
        for fraction in self.settings["seg_fractions"]:
            name = f"seg{_pct(fraction)}"
            stages[name] = self._stage(run_dir, name, lambda f=fraction, n=name: self._seg(ckpt, seed, f, os.path.join(run_dir, n)))
        metrics: dict[str, Any] = {}
        for name, record in stages.items():
            for key, value in record["metrics"].items():
                if _finite(value) is not None:
                    metrics[f"{name}/{key}"] = float(value)
        wall = sum(r["wall_s"] for r in stages.values())
        cpu = sum(r["cpu_s"] for r in stages.values())
        metrics["time/run_wall_min"] = wall / 60.0
        metrics["time/run_cpu_min"] = cpu / 60.0
        if "pretrain" in stages:
            metrics["time/pretrain_wall_min"] = stages["pretrain"]["wall_s"] / 60.0
            metrics["time/pretrain_cpu_min"] = stages["pretrain"]["cpu_s"] / 60.0
        result = {"arm": arm, "seed": int(seed), "metrics": metrics,
                  "stages": {n: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"]} for n, r in stages.items()}}
        _write_json(result, done)
        self._tidy(run_dir)
        return result

    @staticmethod
    def _tidy(run_dir: str) -> None:
        """A finished run keeps its metrics and the pretraining ``model.pt`` (+ ``model.json``,
        ``text/``) only: the resume state, logs and the probes' / segmenters' weights (~330 MB a
        run) go."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, "pretrain", "models", "train_state.pt"))
        for name in os.listdir(run_dir):
            for sub in ("logs", "models") if name != "pretrain" else ("logs",):
                shutil.rmtree(os.path.join(run_dir, name, sub), ignore_errors=True)

    def run_all(self) -> dict[str, list[dict[str, Any]]]:
        """Every arm × seed (seed-major, so a shortened study still has every arm at its first seeds)."""
        results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in self.settings["arms"]}
        for seed in self.settings["seeds"]:
            for arm in self.settings["arms"]:
                start = time.perf_counter()
                results[arm].append(self.run_one(arm, int(seed)))
                self.log(f"[ablation] {self.dataset} {arm} seed {seed}: {time.perf_counter() - start:.0f} s")
        return results


def write_outputs(dataset: str, settings: Mapping[str, Any], results: Mapping[str, Sequence[Mapping[str, Any]]],
                  out_dir: str, command: str, plot: bool = True, name: str | None = None) -> dict[str, Any]:
    """``<name>.json`` / ``.md`` (/ ``.png``) under ``out_dir`` (default name ``ablation_<dataset>``);
    returns the JSON object."""
    summary = summarise({arm: [r["metrics"] for r in runs] for arm, runs in results.items()})
    # a column no arm measured (e.g. finding × side where that stage is left out) is left out too
    columns = [(k, t) for k, t in table_columns(dataset, settings) if any(k in s for s in summary.values())]
    table = markdown_table(summary, columns)
    total_wall = sum(r["metrics"].get("time/run_wall_min", 0.0) for runs in results.values() for r in runs)
    total_cpu = sum(r["metrics"].get("time/run_cpu_min", 0.0) for runs in results.values() for r in runs)
    obj = {
        "dataset": dataset, "command": command, "settings": dict(settings),
        "columns": [{"key": k, "title": t} for k, t in columns],
        "summary": summary,
        "runs": {arm: [{"seed": r["seed"], "stages": r["stages"]} for r in runs] for arm, runs in results.items()},
        "total_wall_min": total_wall, "total_cpu_min": total_cpu,
    }
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name or f"ablation_{dataset}")
    from custom.metrics import nan_to_none
    from custom.utils import atomic_write_text

    # compact: 4 decimals, no indentation (the cache keeps full precision)
    atomic_write_text(json.dumps(_rounded(nan_to_none(obj)), indent=None, separators=(",", ":")) + "\n", base + ".json")
    seeds = ",".join(str(s) for s in settings["seeds"])
    depth = f", encoders to {settings['encoder_depth']}" if settings.get("encoder_depth") else ""
    header = (f"# Ablation on {dataset}\n\n`{command}`\n\nmean ± sample std over seeds [{seeds}]; "
              f"{settings['image_size']} px, {settings['epochs']} pretraining epochs{depth}; best mean per column in bold. "
              f"Total {total_wall:.1f} min wall, {total_cpu:.1f} min CPU.\n\n")
    atomic_write_text(header + table, base + ".md")
    if plot:
        plot_summary(summary, columns, base + ".png", f"reclf ablation, {dataset} (mean ± std over seeds {seeds})")
    return obj


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(t) for t in str(text).strip("[]() ").replace(",", " ").split()]


def _float_list(text: str) -> list[float]:
    return [float(t) for t in str(text).strip("[]() ").replace(",", " ").split()]


def _str_list(text: str) -> list[str]:
    return [t.strip("'\" ") for t in str(text).strip("[]() ").replace(",", " ").split()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="demo", choices=("demo", "covid_notes"))
    p.add_argument("--root", default=os.path.join("..", "shared", "data", "cxr-notes"),
                   help="covid_notes: the cxr-notes folder")
    p.add_argument("--datalist", default="", help="covid_notes: an existing datalist instead of preparing one")
    p.add_argument("--cache", default="", help="run cache (default .cache/ablation/<dataset>)")
    p.add_argument("--out", default=RESULTS_DIR, help="where ablation_<dataset>.{md,json,png} go")
    p.add_argument("--seeds", type=_int_list, help='e.g. "[0,1,2]"')
    p.add_argument("--arms", type=_str_list, help=f"subset of {list(ARMS)}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image_size", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--probe_fractions", type=_float_list)
    p.add_argument("--seg_fractions", type=_float_list, help='"" or "[]" to skip segmentation')
    p.add_argument("--seg_train_samples", type=int)
    p.add_argument("--demo_train", type=int)
    p.add_argument("--demo_val", type=int)
    p.add_argument("--demo_test", type=int)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--no_plot", action="store_true")
    return p.parse_args(argv)


def setup_benchmark_process(threads: int) -> None:
    """Offline, quiet tokenizers, passive OpenMP waits, ``threads`` torch threads: the process set-up
    every study command shares (call before torch is imported anywhere else)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed machine spinning
    # doubled the CPU seconds of a linear probe here (must be set before torch loads OpenMP)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(int(threads))


def override_settings(settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``settings`` with every command-line value that was given (not None) put in."""
    for key in list(settings):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_benchmark_process(args.threads)
    settings = override_settings(default_settings(args.dataset), args)
    unknown = [a for a in settings["arms"] if a not in ARMS]
    if unknown:
        raise ValueError(f"--arms: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    cache = args.cache or os.path.join(REPO, ".cache", "ablation", args.dataset)
    os.makedirs(cache, exist_ok=True)
    check_cache_settings(cache, settings)
    if args.dataset == "demo":
        dataset_dir, datalist = prepare_demo(cache, settings)
    else:
        dataset_dir, datalist = prepare_covid_notes(cache, args.root, args.datalist or None)
    study = AblationStudy(args.dataset, cache, settings, dataset_dir, datalist)
    started = time.perf_counter()
    results = study.run_all()
    command = "python -m benchmarks.ablation " + " ".join(sys.argv[1:] if argv is None else argv)
    obj = write_outputs(args.dataset, settings, results, args.out, command.strip(), plot=not args.no_plot)
    logging.getLogger("reclf").info("ablation %s finished in %.1f min", args.dataset, (time.perf_counter() - started) / 60)
    with open(os.path.join(args.out, f"ablation_{args.dataset}.md"), encoding="utf-8") as f:
        print(f.read())
    return obj


if __name__ == "__main__":
    main()
