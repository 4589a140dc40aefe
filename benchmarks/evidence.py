"""Learning curves of the relation question: does an arm bind a finding word to its side?

    python -m benchmarks.evidence                       # the curves + the test-split table
    python -m benchmarks.evidence --arms "[convirt,reclf]" --seeds "[0]"   # a subset (resumes)
    python -m benchmarks.evidence --aggregate_only --downstream --figures --interventions
        # then, on each run's last snapshot: every downstream task, figures, relation-module
        # interventions at inference (benchmarks/evidence_followups.py)

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

The last snapshot is also scored on ``final_split`` (default **test**: ``evals/test/``), the
final table; the budget and every reading of the curves stay on validation.

Outputs: ``<out>/evidence_demo.json`` (per arm, per evaluated step: mean, sample std, n and
per-seed values of every metric; the final-split table under ``final``; settings; times),
``.md`` (the final table, then the curve split's tables) and ``.png`` (the curves, mean ± std
over seeds); with the follow-up switches ``evidence_downstream_demo.*``,
``evidence_visualize/<arm>/`` and ``evidence_interventions_demo.*``. Diagnostics:
:mod:`benchmarks.evidence_diagnostics`; tables and plot: :mod:`benchmarks.evidence_report`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.ablation import (
    override_settings,
    setup_benchmark_process,
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
from benchmarks.evidence_diagnostics import capture_matchings, diagnostics, filler_vocabulary, per_record
from benchmarks.evidence_followups import FIGURE_INDICES, render_figures, run_downstream, run_interventions
from benchmarks.evidence_report import write_outputs
from benchmarks.report import _finite, _read_json, _write_json, aggregate, format_cell

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

    def snapshot(self, arm: str, seed: int, epoch: int | None = None) -> str:
        """``ckpts/epochNNN/model.pt`` of (arm, seed); default epoch: the last snapshot."""
        epoch = self.final_epoch() if epoch is None else int(epoch)
        return os.path.join(self.run_dir(arm, seed), "ckpts", f"epoch{epoch:03d}", "model.pt")

    def eval_path(self, arm: str, seed: int, epoch: int, split: str | None = None) -> str:
        """``evals/epochNNN.json`` on ``eval_split``, ``evals/<split>/epochNNN.json`` on another split."""
        split = split or self.settings["eval_split"]
        sub = [] if split == self.settings["eval_split"] else [split]
        return os.path.join(self.run_dir(arm, seed), "evals", *sub, f"epoch{int(epoch):03d}.json")

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

    def side_metrics(self, scorer, split: str) -> dict[str, Any]:
        """The finding × side AUROC of a :class:`custom.zero_shot.PairScorer` on ``split``:
        ``side/<finding>``, ``side_acc/<finding>`` and their mean ``side/auroc`` (call under
        ``torch.no_grad()``)."""
        from custom.zero_shot import prompt_metrics

        metrics: dict[str, Any] = {}
        for finding, (task_list, task_prompts) in self.side[split].items():
            images = self._image_items(f"side/{split}/{finding}", task_list, os.path.dirname(task_list), "test")
            result = prompt_metrics(scorer, images, task_list, task_prompts)
            metrics[f"side/{finding}"] = _finite(result.get("auroc_mean"))
            metrics[f"side_acc/{finding}"] = _finite(result.get("acc"))
        metrics["side/auroc"] = aggregate([metrics[f"side/{f}"] for f in self.side[split]])["mean"]
        return metrics

    def evaluate(self, ckpt: str, split: str | None = None) -> dict[str, Any]:
        """Every curve metric of one checkpoint on ``split`` (default ``eval_split``; flat dict)."""
        import torch

        from custom.engines.pretrained import load_pretrained
        from custom.visualize import add_finding_masks, collect_evidence, grounding_from_records
        from custom.zero_shot import PairScorer, prompt_metrics

        split = split or self.settings["eval_split"]
        model, tokenizer = load_pretrained(ckpt, "cpu")
        scorer = PairScorer(model, tokenizer, "cpu")
        with torch.no_grad():
            metrics = self.side_metrics(scorer, split)
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
        split = split or self.settings["eval_split"]
        path = self.eval_path(arm, seed, epoch, split)
        if os.path.exists(path):
            return _read_json(path)
        ckpt = self.snapshot(arm, seed, epoch)
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
                    path = self.eval_path(arm, seed, epoch)
                    if os.path.exists(path):
                        curve[str(int(epoch))] = _read_json(path)
                final = {}
                for split in self.splits()[1:]:
                    path = self.eval_path(arm, seed, self.final_epoch(), split)
                    if os.path.exists(path):
                        final[split] = _read_json(path)
                if curve:
                    results.setdefault(arm, []).append({"arm": arm, "seed": int(seed), "curve": curve, "final": final,
                                                        "pretrain": _read_json(done)})
        return results


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
    p.add_argument("--interventions", action="store_true",
                   help="then the finding × side AUROC of the RECLF arms' last snapshots with IRM / SRM switched off at "
                        "inference (curve split): <out>/evidence_interventions_demo.{json,md}")
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
    if args.interventions:
        obj["interventions"] = run_interventions(study, settings["arms"], args.out)
        with open(os.path.join(args.out, "evidence_interventions_demo.md"), encoding="utf-8") as f:
            print(f.read())
    if args.downstream:
        obj["downstream"] = run_downstream(study, settings, args.out, command.strip(), args.aggregate_only,
                                           plot=not args.no_plot)
        with open(os.path.join(args.out, "evidence_downstream_demo.md"), encoding="utf-8") as f:
            print(f.read())
    return obj


if __name__ == "__main__":
    main()
