"""Learning curves of the relation question: does an arm bind a finding word to its side?

    python -m benchmarks.evidence                       # the study (docs/results.md, "Evidence")
    python -m benchmarks.evidence --arms "[convirt,reclf]" --seeds "[0]"   # a subset (resumes)

The sibling of :mod:`benchmarks.ablation` (its arms, demo data, finding × side task sets, cache
checks and aggregation are imported from there). Where the ablation scores one checkpoint per
run on every downstream task, this follows each (arm, seed) *over training*: the pretraining
bundle (``reclf_pretrain/configs/train.yaml``, in-process through ``monai.bundle.ConfigWorkflow``
with the arm's overrides) runs once to ``epochs``; a handler attached to its trainer copies the
self-describing checkpoint the bundle exports at each epoch end (``models/model.pt`` +
``model.json`` + ``text/``) to ``ckpts/epochNNN/`` at the epochs in ``eval_epochs``. Each
snapshot is then scored on the **validation** split (the test split is the ablation's):

- ``side/auroc``: the finding × side compositional zero-shot AUROC (mean over the lateral
  findings; ``side/<finding>``), :func:`benchmarks.ablation.side_tasks` built from the validation
  studies only; chance 0.5;
- ``zs/auroc_mean``: the demo's six-finding zero-shot AUROC (``reclf_cls`` prompts);
- arms with word–region attention, from the model's own scorer on the validation pairs with
  demo findings (:func:`custom.visualize.collect_evidence`):
  ``grounding`` (share of a finding word's attention inside its lesion) with
  ``grounding_uniform`` (its chance level), ``side_grounding`` (share of a "left"/"right" word's
  attention on that side of the patient; chance 0.5);
  ``probe/r2``: a linear (ridge) probe from the matching vectors m_ijk (the scorer's
  ``match_feature`` output; ``probe/r2_srm`` after SRM) to the attended centroid Σ_r α_r x_r of
  each word, fitted on half the pairs and scored (R²) on the other half;
  ``srm/own_mass``: the SRM attention of a side word ("left") on the words of the finding on that
  side (its own finding), ``srm/other_mass`` on the words of the finding on the other side,
  ``srm/chance`` = the finding's share of the words (uniform attention);
  ``irm/finding``, ``irm/side``, ``irm/filler``: the mean IRM weight β of finding words, side
  words and filler words (words of the demo's filler sentences), relative to uniform (1 = 1/T).

Cache: ``<cache>/<arm>/seed<k>/`` holds ``ckpts/epochNNN/``, ``evals/epochNNN.json`` (atomic) and
``pretrain_done.json``; an interrupted pretraining resumes from the bundle's ``train_state.pt``
(exact: constant lr after warm-up), finished evaluations are skipped, so reruns only aggregate.
A cache refuses other settings (``settings.json``). Several processes may work on disjoint
(arm, seed) sets of one cache at once (``--arms`` / ``--seeds``); the last one aggregates.

Outputs: ``<out>/evidence_demo.json`` (per arm, per evaluated step: mean, sample std, n and
per-seed values of every metric; settings; times), ``.md`` (the final-step table) and ``.png``
(the curves, mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.ablation import (
    AblationStudy,
    override_settings,
    setup_benchmark_process,
    ARM_LABELS,
    ARMS,
    BUNDLES,
    LATERAL_FINDINGS,
    REPO,
    RESULTS_DIR,
    _int_list,
    _str_list,
    check_cache_settings,
    prepare_demo,
    side_tasks,
)
from benchmarks.report import _finite, _read_json, _rounded, _write_json, aggregate, format_cell

EXTRA_ARMS: dict[str, dict[str, Any]] = {
    # SRM attention with a word-distance prior (custom.nets.relations, ``srm_locality``): a
    # location word relates to the finding word beside it (docs/results.md, "Evidence")
    "reclf_srm_local": {"objective": "reclf", "srm_locality": 0.5},
    # sharper word→region attention from the start (the learnable s_att stays near its initial 4)
    "reclf_sharp": {"objective": "reclf", "attention_scale": 16.0},
}
"""Formulation variants studied beside :data:`benchmarks.ablation.ARMS` (arm -> pretraining overrides)."""

EVIDENCE_BATCH = 32  # pairs per batch of collect_evidence (the hooked matchings are split by it)
CURVE_ARMS = ("convirt", "gloria", "reclf_no_srm_no_irm", "reclf_no_srm", "reclf_no_irm", "reclf")


def all_arms() -> dict[str, dict[str, Any]]:
    """The pretraining arms this benchmark knows: the ablation's (random init excluded) + :data:`EXTRA_ARMS`."""
    arms = {k: v for k, v in ARMS.items() if v is not None}
    arms.update(EXTRA_ARMS)
    return arms


def default_settings() -> dict[str, Any]:
    """The budget at which the relation question is asked (docs/results.md, "Evidence").

    32 px with the region grid from ResNet-18's ``layer1`` (8 × 8 regions; the default ``layer3``
    gives 2 × 2 at this size) and the global vector from ``layer2`` (``layer3``/``layer4`` are not
    run), the built-in small BERT, batch 16, lr 1e-3; 1 200 demo training pairs × 20 epochs =
    1 500 steps; 300 validation studies (the curves) and 300 test studies.
    """
    return {
        "seeds": [0, 1, 2], "arms": list(CURVE_ARMS), "image_size": 32, "image_local_layer": "layer1",
        "image_global_layer": "layer2", "batch_size": 16, "lr": 1.0e-3, "epochs": 20,
        "eval_epochs": [1, 2, 5, 10, 20], "demo_train": 1200, "demo_val": 300, "demo_test": 300,
        "eval_split": "validation", "final_split": "test",
    }


# --------------------------------------------------------------------------------------------
# Diagnostics from the model's own tensors
# --------------------------------------------------------------------------------------------


def filler_vocabulary() -> set[str]:
    """Words of the demo's filler sentences that no finding, negation or location phrase uses."""
    import re

    from custom.data.demo import reports as demo  # the report templates and word lists

    def words(texts) -> set[str]:
        return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}

    meaningful = set()
    for table in (demo.FINDING_TEMPLATES, demo.BILATERAL_TEMPLATES, demo.IMPRESSION_TEMPLATES, demo.NEGATIONS):
        meaningful |= words(t for v in table.values() for t in v)
    meaningful |= words(t for v in demo.ZONE_WORDS.values() for t in v)
    meaningful |= words(t for v in demo.SEVERITY_WORDS.values() for s in v.values() for t in s)
    meaningful |= words(demo.NORMAL_LUNG_STATEMENTS) | {"left", "right"}
    return words(demo.FILLER) - meaningful


def ridge_r2(features, targets, alpha: float = 1.0) -> float | None:
    """R² (mean over target columns) of a ridge regression fitted on the first half of the rows
    and scored on the second half; None with too few rows or no target variance."""
    import numpy as np

    x, y = np.asarray(features, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    n = x.shape[0]
    if n < 8:
        return None
    half = n // 2
    mu_x, mu_y = x[:half].mean(0), y[:half].mean(0)
    xt, yt = x[:half] - mu_x, y[:half] - mu_y
    w = np.linalg.solve(xt.T @ xt + alpha * np.eye(x.shape[1]), xt.T @ yt)
    pred = (x[half:] - mu_x) @ w + mu_y
    sst = ((y[half:] - y[half:].mean(0)) ** 2).sum(0)
    if not np.all(sst > 1e-12):
        return None
    return float(np.mean(1.0 - ((y[half:] - pred) ** 2).sum(0) / sst))


def diagnostics(records: Sequence[Mapping[str, Any]], matchings: Sequence[Any] | None,
                matchings_srm: Sequence[Any] | None, filler: set[str]) -> dict[str, Any]:
    """The diagnostics of the module docstring from :func:`custom.visualize.collect_evidence`
    records (with ``finding_masks``) and, per record, its (T', D_m) matching vectors before /
    after SRM (None when the scorer has none)."""
    import numpy as np

    from custom.visualize import FINDING_WORDS, finding_word_positions

    finding_vocab = {w for names in FINDING_WORDS.values() for w in names}
    probe_x, probe_x_srm, probe_y = [], [], []
    own, other, chance = [], [], []
    irm: dict[str, list[float]] = {"finding": [], "side": [], "filler": []}
    for n, record in enumerate(records):
        attention = record.get("attention")
        if attention is None:
            continue
        h, w = record["grid"]
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        coords = np.stack([xs.reshape(-1), ys.reshape(-1)], 1)  # (R, 2), row-major like the grid
        centroid = attention @ coords  # (T', 2)
        if matchings is not None:
            probe_x.append(np.asarray(matchings[n]))
            probe_y.append(centroid)
            if matchings_srm is not None:
                probe_x_srm.append(np.asarray(matchings_srm[n]))
        words = record["words"]
        t = len(words)
        beta = record.get("importance")
        if beta is not None and record.get("irm"):
            rel = np.asarray(beta) * t
            for k, word in enumerate(words):
                kind = "finding" if word in finding_vocab else "side" if word in ("left", "right") else \
                    "filler" if word in filler else None
                if kind:
                    irm[kind].append(float(rel[k]))
        srm = record.get("srm_attention")
        findings = record["item"].get("findings") or []
        by_side = {f["side"]: f["finding"] for f in findings if f.get("side") in ("left", "right")}
        if srm is not None and len(by_side) == 2:
            attn = np.asarray(srm).mean(0)  # (T', T'), heads averaged
            for k, word in enumerate(words):
                if word not in by_side:
                    continue
                mine = finding_word_positions(words, by_side[word])
                theirs = finding_word_positions(words, by_side["left" if word == "right" else "right"])
                if mine:
                    own.append(float(attn[k, mine].sum()))
                    other.append(float(attn[k, theirs].sum()) if theirs else 0.0)
                    chance.append(len(mine) / t)

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {"srm/own_mass": mean(own), "srm/other_mass": mean(other), "srm/chance": mean(chance),
                           "srm/n_side_words": len(own)}
    for kind, values in irm.items():
        out[f"irm/{kind}"] = mean(values)
    if probe_x:
        x, y = np.concatenate(probe_x), np.concatenate(probe_y)
        out["probe/r2"] = ridge_r2(x, y)
        out["probe/centroid_std"] = float(y.std(0).mean())
        if probe_x_srm:
            out["probe/r2_srm"] = ridge_r2(np.concatenate(probe_x_srm), y)
    return out


def capture_matchings(model) -> tuple[list[Any], list[Any], Callable[[], None]]:
    """Forward hooks on the last layer of the RECLF scorer's ``match_feature`` (m) and ``srm`` (m'): lists that fill
    with one (B, 1, 1, T, D_m) tensor per :meth:`RECLFModel.matched_pair_details` call, and a
    function removing the hooks. Empty lists for scorers without them."""
    pre, post, handles = [], [], []
    scorer = getattr(model, "scorer", None)
    if scorer is not None and hasattr(scorer, "match_feature"):
        handles.append(scorer.match_feature[-1].register_forward_hook(lambda m, i, o: pre.append(o.detach())))
        if getattr(scorer, "srm", None) is not None:
            handles.append(scorer.srm.register_forward_hook(lambda m, i, o: post.append(o[0].detach())))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return pre, post, remove


def per_record(batches: Sequence[Any], records: Sequence[Mapping[str, Any]], batch_size: int) -> list[Any] | None:
    """Split hooked batch tensors (B·T or B × 1 × 1 × T leading dims, one per batch of
    ``batch_size`` records of :func:`custom.visualize.collect_evidence`) into one (T', D) array
    per record, in order."""
    if not batches:
        return None
    sizes = [min(batch_size, len(records) - start) for start in range(0, len(records), batch_size)]
    if len(sizes) != len(batches):
        raise RuntimeError(f"hooked {len(batches)} batches for {len(sizes)} batches of records")
    rows = [row for n, batch in zip(sizes, batches) for row in batch.reshape(n, -1, batch.shape[-1]).float().numpy()]
    return [row[: len(r["words"])] for row, r in zip(rows, records)]


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


class EvidenceStudy:
    """Learning curves of every (arm, seed) under ``cache`` (see the module docstring)."""

    def __init__(self, cache: str, settings: Mapping[str, Any], dataset_dir: str, datalist: str,
                 log: Callable[[str], None] = print, arms: Mapping[str, dict[str, Any]] | None = None) -> None:
        self.arms = dict(arms if arms is not None else all_arms())
        unknown = [a for a in settings["arms"] if a not in self.arms]
        if unknown:
            raise ValueError(f"--arms: unknown arm(s) {unknown}; choose from {list(self.arms)}")
        self.cache, self.settings = os.path.abspath(cache), dict(settings)
        self.dataset_dir, self.datalist, self.log = os.path.abspath(dataset_dir), os.path.abspath(datalist), log
        self.prompts = os.path.join(BUNDLES, "reclf_cls", "configs", "prompts", "demo.yaml")
        self.side = {split: side_tasks(self.datalist, self.cache, self.prompts, splits=(split,), folder=f"side_tasks_{split}")
                     for split in self.splits()}
        self.decode_cache = os.path.join(self.cache, f"decoded_{int(settings['image_size'])}px")
        self._images: dict[str, Any] = {}
        self._filler = filler_vocabulary()

    def run_dir(self, arm: str, seed: int) -> str:
        return os.path.join(self.cache, arm, f"seed{int(seed)}")

    def splits(self) -> list[str]:
        """The curve split (``eval_split``), then the split of the final table (``final_split``, if set and other)."""
        final = self.settings.get("final_split")
        return [self.settings["eval_split"]] + ([final] if final and final != self.settings["eval_split"] else [])

    def final_epoch(self) -> int:
        return max(int(e) for e in self.settings["eval_epochs"] if int(e) <= int(self.settings["epochs"]))

    # ---- pretraining with snapshots ---------------------------------------------------------
    def pretrain(self, arm: str, seed: int) -> dict[str, Any]:
        """Train (arm, seed) to ``epochs`` with snapshots at ``eval_epochs``; resumes; cached."""
        run_dir = self.run_dir(arm, seed)
        done = os.path.join(run_dir, "pretrain_done.json")
        if os.path.exists(done):
            return _read_json(done)
        from ignite.engine import Events
        from monai.bundle import ConfigWorkflow

        out = os.path.join(run_dir, "pretrain")
        resume = os.path.isfile(os.path.join(out, "models", "train_state.pt"))
        epochs = int(self.settings["epochs"])
        wanted = {int(e) for e in self.settings["eval_epochs"] if int(e) <= epochs}
        steps_file = os.path.join(run_dir, "steps.json")
        steps = _read_json(steps_file) if os.path.exists(steps_file) else {}
        overrides = dict(
            output_dir=out, epochs=epochs, batch_size=int(self.settings["batch_size"]), lr=float(self.settings["lr"]),
            seed=int(seed), val_interval=10_000, cache_dir=os.path.join(self.decode_cache, "pretrain"), resume=resume,
            dataset_dir=self.dataset_dir, datalist=self.datalist, image_size=int(self.settings["image_size"]),
            device="cpu", amp=False, num_workers=0, image_local_layer=self.settings["image_local_layer"],
            image_global_layer=self.settings["image_global_layer"], **self.arms[arm],
        )
        workflow = ConfigWorkflow(config_file=os.path.join(BUNDLES, "reclf_pretrain", "configs", "train.yaml"),
                                  workflow_type="train", **overrides)
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")

        timing_file = os.path.join(run_dir, "pretrain_time.json")  # accumulated over resumed segments
        timing = _read_json(timing_file) if os.path.exists(timing_file) else {"wall_s": 0.0, "cpu_s": 0.0}
        mark = [time.perf_counter(), time.process_time()]

        def snapshot(engine) -> None:  # after ExportPretrained (attached first) wrote models/
            epoch = int(engine.state.epoch)
            now = [time.perf_counter(), time.process_time()]
            timing["wall_s"] += now[0] - mark[0]
            timing["cpu_s"] += now[1] - mark[1]
            timing["epoch"] = epoch
            _write_json(timing, timing_file)
            if epoch not in wanted:
                mark[:] = [time.perf_counter(), time.process_time()]
                return
            target = os.path.join(run_dir, "ckpts", f"epoch{epoch:03d}")
            tmp = target + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            models = os.path.join(out, "models")
            os.makedirs(tmp)
            for name in ("model.pt", "model.json"):
                shutil.copy2(os.path.join(models, name), os.path.join(tmp, name))
            shutil.copytree(os.path.join(models, "text"), os.path.join(tmp, "text"))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            steps[str(epoch)] = int(engine.state.iteration)
            _write_json(steps, steps_file)
            self.evaluate_snapshot(arm, seed, epoch, steps[str(epoch)])  # partial curves survive an unfinished run
            mark[:] = [time.perf_counter(), time.process_time()]  # evaluation time is not pretraining time

        trainer.add_event_handler(Events.EPOCH_COMPLETED, snapshot)
        self.log(f"[evidence] {arm} seed {seed}: pretraining{' (resumed)' if resume else ''} ...")
        for epoch, step in sorted((int(e), int(v)) for e, v in steps.items()):  # snapshots of an earlier segment
            self.evaluate_snapshot(arm, seed, epoch, step)
        mark[:] = [time.perf_counter(), time.process_time()]
        workflow.run()
        workflow.finalize()
        record = {"wall_s": timing["wall_s"], "cpu_s": timing["cpu_s"], "steps": steps, "resumed": resume}
        with_state = os.path.join(out, "models", "train_state.pt")
        if os.path.exists(with_state):
            os.remove(with_state)
        _write_json(record, done)
        self.log(f"[evidence] {arm} seed {seed}: pretrained in {record['wall_s']:.0f} s wall / {record['cpu_s']:.0f} s CPU")
        return record

    # ---- evaluation of one snapshot ---------------------------------------------------------
    def _image_items(self, key: str, datalist: str, dataset_dir: str, split: str):
        if key not in self._images:
            from custom.data import load_datalist
            from custom.downstream import ImageItems

            items = load_datalist(datalist, dataset_dir, split, require=("image", "labels"), missing="skip")
            self._images[key] = ImageItems(items, int(self.settings["image_size"]))
        return self._images[key]

    def _evidence_items(self, split: str) -> list[dict[str, Any]]:
        key = f"evidence/{split}"
        if key not in self._images:
            from custom.data import load_datalist

            items = load_datalist(self.datalist, self.dataset_dir, split, require=("image", "report"), missing="skip")
            self._images[key] = [it for it in items if it.get("findings") and it.get("mask")]
        return self._images[key]

    def evaluate(self, ckpt: str, split: str | None = None) -> dict[str, Any]:
        """Every curve metric of one checkpoint on ``split`` (default ``eval_split``; flat dict)."""
        import torch

        from custom.engines.pretrained import load_pretrained
        from custom.visualize import add_finding_masks, collect_evidence, grounding_from_records
        from custom.zero_shot import PairScorer, prompt_metrics

        split = split or self.settings["eval_split"]
        model, tokenizer = load_pretrained(ckpt, "cpu")
        scorer = PairScorer(model, tokenizer, "cpu")
        metrics: dict[str, Any] = {}
        aurocs = []
        with torch.no_grad():
            for finding, (task_list, task_prompts) in self.side[split].items():
                images = self._image_items(f"side/{split}/{finding}", task_list, os.path.dirname(task_list), "test")
                result = prompt_metrics(scorer, images, task_list, task_prompts)
                metrics[f"side/{finding}"] = _finite(result.get("auroc_mean"))
                metrics[f"side_acc/{finding}"] = _finite(result.get("acc"))
                aurocs.append(metrics[f"side/{finding}"])
            metrics["side/auroc"] = aggregate(aurocs)["mean"]
            images = self._image_items(f"zs/{split}", self.datalist, self.dataset_dir, split)
            metrics["zs/auroc_mean"] = _finite(prompt_metrics(scorer, images, self.datalist, self.prompts).get("auroc_mean"))
            if model.scorer is not None:
                pre, post, remove = capture_matchings(model)
                try:
                    records = collect_evidence(model, tokenizer, self._evidence_items(split), int(self.settings["image_size"]),
                                               batch_size=EVIDENCE_BATCH)
                finally:
                    remove()
                add_finding_masks(records, int(self.settings["image_size"]))
                ground = grounding_from_records(records)
                metrics.update({k: ground.get(k) for k in ("grounding", "grounding_uniform", "side_grounding")})
                for name in LATERAL_FINDINGS:
                    metrics[f"grounding/{name}"] = ground.get(f"grounding/{name}")
                metrics.update(diagnostics(records, per_record(pre, records, EVIDENCE_BATCH),
                                           per_record(post, records, EVIDENCE_BATCH), self._filler))
        with torch.no_grad():
            metrics["scale/local"] = float(model.local_scale()) if model.scorer is not None else None
            metrics["scale/attention"] = float(model.scorer.attention_scale()) if model.scorer is not None else None
        return metrics

    def evaluate_snapshot(self, arm: str, seed: int, epoch: int, step: int, split: str | None = None) -> dict[str, Any]:
        """``evals/epochNNN.json`` of (arm, seed) on ``eval_split`` (``evals/<split>/epochNNN.json``
        on another ``split``): computed once from ``ckpts/epochNNN/``, then read."""
        run_dir = self.run_dir(arm, seed)
        split = split or self.settings["eval_split"]
        path = os.path.join(run_dir, "evals", *([] if split == self.settings["eval_split"] else [split]),
                            f"epoch{epoch:03d}.json")
        if os.path.exists(path):
            return _read_json(path)
        ckpt = os.path.join(run_dir, "ckpts", f"epoch{epoch:03d}", "model.pt")
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = self.evaluate(ckpt, split)
        metrics["time/eval_wall_s"] = time.perf_counter() - wall
        metrics["time/eval_cpu_s"] = time.process_time() - cpu
        metrics["step"] = int(step)
        _write_json(metrics, path)
        self.log(f"[evidence] {arm} seed {seed} epoch {epoch} (step {step}, {split}): side AUROC "
                 f"{format_cell({'mean': metrics['side/auroc']})}, zero-shot {format_cell({'mean': metrics['zs/auroc_mean']})}, "
                 f"grounding {format_cell({'mean': metrics.get('grounding')})}")
        return metrics

    def run_one(self, arm: str, seed: int) -> dict[str, Any]:
        """Pretrain (arm, seed) and evaluate each snapshot; returns {"arm", "seed", "steps", "curve": {epoch: metrics}, ...}."""
        record = self.pretrain(arm, seed)
        curve: dict[str, dict[str, Any]] = {}
        for epoch in sorted(int(e) for e in self.settings["eval_epochs"] if int(e) <= int(self.settings["epochs"])):
            curve[str(epoch)] = self.evaluate_snapshot(arm, seed, epoch, int(record["steps"][str(epoch)]))
        last = self.final_epoch()
        final = {split: self.evaluate_snapshot(arm, seed, last, int(record["steps"][str(last)]), split)
                 for split in self.splits()[1:]}  # the final table's split: the last snapshot only
        return {"arm": arm, "seed": int(seed), "pretrain": record, "curve": curve, "final": final}

    def run_all(self) -> dict[str, list[dict[str, Any]]]:
        """Every arm × seed, seed-major (a shortened study still has every arm at its first seeds)."""
        results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in self.settings["arms"]}
        for seed in self.settings["seeds"]:
            for arm in self.settings["arms"]:
                results[arm].append(self.run_one(arm, int(seed)))
        return results

    def collect(self, arms: Sequence[str], seeds: Sequence[int], partial: bool = False) -> dict[str, list[dict[str, Any]]]:
        """The finished runs in the cache (no training): {arm: [run]} for aggregation; with
        ``partial`` also unfinished runs' evaluated snapshots (``pretrain`` then holds the time so far)."""
        results: dict[str, list[dict[str, Any]]] = {}
        for arm in arms:
            for seed in seeds:
                run_dir = self.run_dir(arm, seed)
                done = os.path.join(run_dir, "pretrain_done.json")
                if not os.path.exists(done):
                    timing = os.path.join(run_dir, "pretrain_time.json")
                    if not (partial and os.path.exists(timing)):
                        continue
                    done = timing
                curve = {}
                for epoch in self.settings["eval_epochs"]:
                    path = os.path.join(run_dir, "evals", f"epoch{int(epoch):03d}.json")
                    if os.path.exists(path):
                        curve[str(int(epoch))] = _read_json(path)
                final = {}
                for split in self.splits()[1:]:
                    path = os.path.join(run_dir, "evals", split, f"epoch{self.final_epoch():03d}.json")
                    if os.path.exists(path):
                        final[split] = _read_json(path)
                if curve:
                    results.setdefault(arm, []).append({"arm": arm, "seed": int(seed), "curve": curve, "final": final,
                                                        "pretrain": _read_json(done)})
        return results


# --------------------------------------------------------------------------------------------
# Aggregation, table, plot
# --------------------------------------------------------------------------------------------

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
                 + f"\n## The curves: {settings['eval_split']} split\n\n")
    text = header + text + final_table(summary) + "\nFinding × side AUROC per finding:\n\n" + per_finding_table(summary)
    for epoch in sorted({int(e) for e in settings["eval_epochs"]})[:-1]:  # the same step for every arm that reached it
        text += (f"\n## At epoch {epoch} (arms that did not reach it: their last step)\n\n" + final_table(summary, epoch=epoch)
                 + "\n" + per_finding_table(summary, epoch=epoch))
    atomic_write_text(text, base + ".md")
    if plot:
        plot_curves(summary, base + ".png", f"reclf learning curves, demo {settings['eval_split']} (mean ± std over seeds)")
    return obj


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

FIGURE_INDICES = "2,15,23"
"""Validation studies rendered by :func:`render_figures`: each holds two lateral findings on
opposite sides (the binding case; generator seed 0, 300 validation studies)."""


def render_figures(study: EvidenceStudy, arms: Sequence[str], out_dir: str, seed: int = 0) -> list[str]:
    """``reclf_pretrain/configs/visualize.yaml`` on the last snapshot of (arm, ``seed``) for each
    arm with word–region attention: word→region attention, IRM weights and SRM relations of the
    :data:`FIGURE_INDICES` studies of the curve split, into ``<out_dir>/evidence_visualize/<arm>/``."""
    from benchmarks.ablation import run_bundle

    written = []
    last = study.final_epoch()
    for arm in arms:
        ckpt = os.path.join(study.run_dir(arm, seed), "ckpts", f"epoch{last:03d}", "model.pt")
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
    last = study.final_epoch()

    def pretrained(arm: str, seed: int) -> tuple[str, dict[str, Any]]:
        record = study.pretrain(arm, seed)
        ckpt = os.path.join(study.run_dir(arm, seed), "ckpts", f"epoch{last:03d}", "model.pt")
        return ckpt, {"metrics": {}, "wall_s": record["wall_s"], "cpu_s": record["cpu_s"]}

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
# Command line
# --------------------------------------------------------------------------------------------


def read_earlier_output(path: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """An earlier ``evidence_demo.json`` to merge; refuses one made with other settings (arms aside)."""
    earlier = _read_json(path)
    mine = {k: v for k, v in settings.items() if k != "arms"}
    theirs = {k: v for k, v in earlier.get("settings", {}).items() if k != "arms"}
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"{path}: made with other settings ({', '.join(diff)}); merge only outputs of the same study")
    return earlier


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="", help="run cache (default .cache/evidence/demo)")
    p.add_argument("--out", default=RESULTS_DIR, help="where evidence_demo.{md,json,png} go")
    p.add_argument("--name", default="evidence_demo", help="output file stem")
    p.add_argument("--seeds", type=_int_list, help='e.g. "[0,1,2]"')
    p.add_argument("--arms", type=_str_list, help=f"subset of {list(all_arms())}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--eval_epochs", type=_int_list)
    p.add_argument("--image_size", type=int)
    p.add_argument("--image_local_layer")
    p.add_argument("--image_global_layer")
    p.add_argument("--batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--demo_train", type=int)
    p.add_argument("--demo_val", type=int)
    p.add_argument("--demo_test", type=int)
    p.add_argument("--eval_split", help="split of the curves (default validation: the budget is chosen on it)")
    p.add_argument("--final_split", help="split of the final table, the last snapshot only (default test; '' = none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (run seeds as parallel processes instead)")
    p.add_argument("--aggregate_only", action="store_true", help="only aggregate what the cache holds")
    p.add_argument("--partial", action="store_true", help="aggregate unfinished runs' snapshots too")
    p.add_argument("--no_plot", action="store_true")
    p.add_argument("--downstream", action="store_true",
                   help="then every downstream task on each run's last snapshot (+ a random-init encoder of the "
                        "same depth): <out>/evidence_downstream_demo.{json,md,png}")
    p.add_argument("--figures", action="store_true",
                   help=f"then visualize.yaml figures of studies {FIGURE_INDICES} for seed 0 of each arm with attention")
    p.add_argument("--merge", type=_str_list, default=[],
                   help="earlier outputs (.json) of the same settings whose other arms join this table")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_benchmark_process(args.threads)
    settings = override_settings(default_settings(), args)
    cache = args.cache or os.path.join(REPO, ".cache", "evidence", "demo")
    os.makedirs(cache, exist_ok=True)
    check_cache_settings(cache, settings)
    dataset_dir, datalist = prepare_demo(cache, settings)
    study = EvidenceStudy(cache, settings, dataset_dir, datalist)
    if not args.aggregate_only:
        study.run_all()
    results = study.collect(settings["arms"], settings["seeds"], partial=args.partial)
    command = "python -m benchmarks.evidence " + " ".join(sys.argv[1:] if argv is None else argv)
    merge = [read_earlier_output(path, settings) for path in args.merge]
    obj = write_outputs(settings, results, args.out, command.strip(), plot=not args.no_plot, name=args.name, merge=merge)
    logging.getLogger("reclf").info("evidence written to %s", os.path.join(args.out, args.name))
    with open(os.path.join(args.out, f"{args.name}.md"), encoding="utf-8") as f:
        print(f.read())
    if args.figures:
        render_figures(study, settings["arms"], args.out)
    if args.downstream:
        obj["downstream"] = run_downstream(study, settings, args.out, command.strip(), args.aggregate_only,
                                           plot=not args.no_plot)
        with open(os.path.join(args.out, "evidence_downstream_demo.md"), encoding="utf-8") as f:
            print(f.read())
    return obj


if __name__ == "__main__":
    main()
