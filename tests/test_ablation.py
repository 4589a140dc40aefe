"""benchmarks/ablation.py: mean ± std aggregation against hand-computed numbers, the table, and a
tiny end-to-end study through the command line (2 arms, 1 seed, 1 epoch, 64 px) whose rerun is
served from the cache without retraining."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from benchmarks import ablation


def test_aggregate_matches_hand_computed():
    agg = ablation.aggregate([0.5, 0.7, 0.9])
    assert agg["mean"] == pytest.approx(0.7)
    # sample std: sqrt(((-0.2)^2 + 0 + 0.2^2) / (3 - 1)) = 0.2
    assert agg["std"] == pytest.approx(0.2)
    assert agg["n"] == 3
    # missing and NaN values are left out of mean and std, kept as None in seed order
    agg = ablation.aggregate([1.0, None, float("nan"), 4.0])
    assert agg["mean"] == pytest.approx(2.5)
    assert agg["std"] == pytest.approx(math.sqrt(((1.0 - 2.5) ** 2 + (4.0 - 2.5) ** 2) / 1))
    assert agg["values"] == [1.0, None, None, 4.0] and agg["n"] == 2
    one = ablation.aggregate([0.25])
    assert one["mean"] == 0.25 and one["std"] is None
    assert ablation.aggregate([])["mean"] is None
    assert ablation.format_cell(ablation.aggregate([0.5, 0.7, 0.9])) == "0.700 ± 0.200"
    assert ablation.format_cell(one) == "0.250"
    assert ablation.format_cell(ablation.aggregate([None])) == "—"


def test_summary_and_markdown_table():
    runs = {"convirt": [{"zs/acc": 0.4, "time/pretrain_wall_min": 2.0}, {"zs/acc": 0.6, "time/pretrain_wall_min": 4.0}],
            "reclf": [{"zs/acc": 0.7, "lp1/seed0/acc": 0.1, "lp1/n_train": 4.0}, {"zs/acc": 0.9, "extra": None}]}
    summary = ablation.summarise(runs)
    assert summary["convirt"]["zs/acc"]["mean"] == pytest.approx(0.5)
    assert summary["convirt"]["zs/acc"]["std"] == pytest.approx(math.sqrt(0.02))  # (0.1² + 0.1²) / 1
    assert summary["reclf"]["zs/acc"]["mean"] == pytest.approx(0.8)
    assert set(summary["reclf"]) == {"zs/acc"}  # no missing values, per-label-seed copies or counts
    table = ablation.markdown_table(summary, [("zs/acc", "zero-shot acc"), ("time/pretrain_wall_min", "min")])
    lines = table.strip().splitlines()
    assert lines[0] == "| arm | zero-shot acc | min |"
    assert lines[2] == "| ConVIRT (global) | 0.500 ± 0.141 | 3.0 ± 1.4 |"
    assert lines[3] == "| RECLF (full) | **0.800 ± 0.141** | — |"  # best mean in bold, times never


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="cxr-notes"):
        ablation.main(["--dataset", "covid_notes", "--root", str(tmp_path / "missing"), "--cache", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown arm"):
        ablation.main(["--dataset", "demo", "--arms", "reclf,nope", "--cache", str(tmp_path / "c"), "--out", str(tmp_path)])
    assert not os.path.exists(tmp_path / "c" / "data")  # checked before any data is generated


@pytest.mark.slow
def test_tiny_study_end_to_end_and_cache(tmp_path):
    cache, out = str(tmp_path / "cache"), str(tmp_path / "out")
    argv = ["--dataset", "demo", "--cache", cache, "--out", out, "--demo_train", "48", "--demo_val", "32",
            "--demo_test", "24", "--arms", "random_init,reclf", "--seeds", "[0]", "--epochs", "1",
            "--batch_size", "16", "--probe_fractions", "1.0", "--seg_fractions", "1.0",
            "--seg_train_samples", "16"]
    obj = ablation.main(argv)

    # JSON: mean / std / n / values per arm and metric; the random-init arm has no text tasks
    saved = json.load(open(os.path.join(out, "ablation_demo.json"), encoding="utf-8"))
    assert set(saved["summary"]) == set(obj["summary"]) == {"random_init", "reclf"}
    key = "zs/auroc_mean"  # the file is rounded to 4 decimals
    assert saved["summary"]["reclf"][key]["mean"] == pytest.approx(obj["summary"]["reclf"][key]["mean"], abs=1e-4)
    reclf = saved["summary"]["reclf"]
    for key in ("zs/auroc_mean", "side/acc", "lp100/auroc_mean", "ret/i2t_recall@5", "seg100/dice",
                "time/pretrain_wall_min"):
        assert set(reclf[key]) == {"mean", "std", "n", "values"}, key
        assert reclf[key]["n"] == 1 and reclf[key]["std"] is None and reclf[key]["values"] == [reclf[key]["mean"]]
    assert 0.0 <= reclf["side/acc"]["mean"] <= 1.0 and 0.0 <= reclf["side/auroc"]["mean"] <= 1.0
    assert 0.0 <= reclf["grounding/grounding"]["mean"] <= 1.0  # custom.visualize.grounding_score
    rand = saved["summary"]["random_init"]
    assert "lp100/auroc_mean" in rand and "seg100/dice" in rand and "zs/auroc_mean" not in rand
    assert saved["settings"]["seeds"] == [0] and saved["total_wall_min"] > 0
    table = open(os.path.join(out, "ablation_demo.md"), encoding="utf-8").read()
    assert "| random init |" in table and "| RECLF (full) |" in table and "finding×side" in table
    assert os.path.getsize(os.path.join(out, "ablation_demo.png")) > 1000

    # the compositional sets: two classes named "left F" / "right F", rows from opposite-side pairs
    side = json.load(open(os.path.join(cache, "side_tasks", "effusion.json"), encoding="utf-8"))
    assert side["label_names"] == ["left effusion", "right effusion"] and side["training"] == []

    # a finished run keeps its pretraining checkpoint, not the resume state or downstream weights
    run_dir = os.path.join(cache, "reclf", "seed0")
    assert os.path.exists(os.path.join(run_dir, "pretrain", "models", "model.pt"))
    assert not os.path.exists(os.path.join(run_dir, "pretrain", "models", "train_state.pt"))
    assert not os.path.exists(os.path.join(run_dir, "seg100", "models"))

    # rerun: served from result.json, nothing retrained (checkpoint and stage markers untouched)
    ckpt = os.path.join(run_dir, "pretrain", "models", "model.pt")
    marker = os.path.join(run_dir, "stages", "pretrain.json")
    stamps = (os.path.getmtime(ckpt), os.path.getmtime(marker))
    start = time.perf_counter()
    again = ablation.main(argv + ["--no_plot"])
    assert time.perf_counter() - start < 10
    assert (os.path.getmtime(ckpt), os.path.getmtime(marker)) == stamps
    assert again["summary"]["reclf"]["zs/auroc_mean"] == obj["summary"]["reclf"]["zs/auroc_mean"]

    # an interrupted run (no result.json) resumes from its finished stages: pretraining is not redone
    os.remove(os.path.join(run_dir, "result.json"))
    os.remove(os.path.join(run_dir, "stages", "lp100.json"))
    ablation.main(argv + ["--no_plot"])
    assert (os.path.getmtime(ckpt), os.path.getmtime(marker)) == stamps
    assert os.path.exists(os.path.join(run_dir, "result.json"))
