"""benchmarks/gpu_check.py's dry run (CPU, tiny sizes, every section) so that the GPU check cannot
rot between GPU runs: one subprocess through benchmarks/gpu_check.sh, then the JSON fields."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import REPO


def test_gpu_check_dry_run_writes_every_section(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the dry run as on a CPU machine
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--dry_run", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["device_type"] == "cpu"
    assert result["goal_pairs_per_s"] == 725.0 and "meets_goal" in result
    variants = {r["name"]: r for r in result["steps_by_variant"]}
    assert set(variants) == {"fp32", "fp16", "bf16", "fp16_channels_last", "bf16_channels_last"}
    assert "CUDA" in variants["fp16"]["skipped"]  # fp16 needs a GPU: skipped with the reason
    for name in ("fp32", "bf16", "bf16_channels_last"):
        row = variants[name]
        assert row["pairs_per_s"] > 0 and row["step_s"] > 0 and row["peak_mib"] > 0, row
        assert row["batch"] == 4
    search = result["max_batch"]
    assert search["capped"] and search["max_batch"] == search["cap"] == 8  # no OOM on CPU: the cap
    assert [t["batch"] for t in search["tried"]] == [4, 8] and all(t["fits"] for t in search["tried"])
    ddp = result["ddp"]
    assert "error" not in ddp, ddp
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["pairs_per_s"] > 0
    assert len(ddp["per_rank_memory"]) == 2 and all(m["peak_mib"] > 0 for m in ddp["per_rank_memory"])
    assert result["best_pairs_per_s"] >= max(r.get("pairs_per_s", 0) for r in variants.values())
