"""Training-step throughput: pairs/s and peak memory of the full pretraining step per objective.

    python -m benchmarks.throughput [--sizes demo,real] [--batch 16,32] [--steps 2] [--device cpu]
                                    [--objectives convirt,gloria,reclf,reclf_topk] [--pipeline]

One *step* is what :class:`custom.engine.PretrainTrainer` does per iteration: forward of
``custom.engines.pretrained.build_reclf_model``'s network, ``custom.losses.PretrainLoss``, backward,
gradient clipping and an AdamW step from ``custom.optim.build_optimizer``, wired as
``bundles/reclf_pretrain/configs/train.yaml`` wires them. Sizes:

- ``demo``: 64 px, ResNet-18, the built-in small BERT (2 layers, 128-d), train.yaml's heads
  (embed 128, local 128, match 64), demo reports (natural lengths), B = 16.
- ``real``: 224 px, ResNet-50 (layer3 grid 14 × 14 = 196 regions), a 12-layer 768-d BERT built
  from config (random init, nothing downloaded), 128 tokens, the heads of
  ``recipes/reclf.yaml`` (embed 768, local 768: RECLF on GLoRIA's footing), B = 16 and 32.

Every objective at a size uses the same towers, so the ratios isolate the head and loss: the
*encoder* baseline is the bare image + text encoder forward + backward (a sum of their outputs
as the loss) at the same size. Each configuration runs in a fresh subprocess so that the peak
memory is its own: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the first step)
over the resident set at that moment. Time is the median of ``--steps`` steps after one warm-up.

``--pipeline`` also calls ``benchmarks.pipeline.measure_pipeline`` (the data-pipeline benchmark,
when present) and prints pipeline warm pairs/s ÷ step pairs/s at the real size against ≥ 2×.
Every figure in the report is measured in the same run. Results go to
``benchmarks/results/throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")

# BERT-base shape, random init (the size of Bio_ClinicalBERT / CXR-BERT without their weights)
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
SIZES: dict[str, dict[str, Any]] = {
    "demo": {"image_size": 64, "image_encoder": "resnet18", "text_config": None, "tokens": None,
             "model": {"embed_dim": 128, "local_dim": 128, "match_dim": 64}},
    "real": {"image_size": 224, "image_encoder": "resnet50", "text_config": BERT_BASE, "tokens": 128,
             "model": {"embed_dim": 768, "local_dim": 768, "match_dim": 64}},
}
# objective name in the table -> RECLFModel arguments
OBJECTIVES: dict[str, dict[str, Any]] = {
    "convirt": {"objective": "convirt"},
    "gloria": {"objective": "gloria"},
    "reclf": {"objective": "reclf"},
    "reclf_topk": {"objective": "reclf", "local_negatives": "topk", "topk": 4},
    # the all-pairs term without activation checkpointing (a 16x larger chunk_elements budget):
    # what recomputing checkpointed chunks costs where the default budget splits the term
    "reclf_nockpt": {"objective": "reclf", "chunk_elements": 2**26},
}
STEP_GOAL = 1.10  # RECLF step time ≤ 1.10 × ConVIRT's, at every size
PIPELINE_GOAL = 2.0  # data pipeline warm pairs/s ≥ 2 × the real-size step's pairs/s


# ---------------------------------------------------------------------------------------------
# building a step (also used by benchmarks/gpu_check.py and the profiling notes)
# ---------------------------------------------------------------------------------------------
def demo_reports(n: int, seed: int = 0, min_tokens: int | None = None, tokenizer=None) -> list[str]:
    """``n`` demo reports (custom.demo's generator). With ``min_tokens`` each is extended by
    further demo reports until it has at least that many tokens (MIMIC-length reports)."""
    import numpy as np

    from custom.demo import make_report, sample_findings

    rng = np.random.default_rng(seed)
    reports = []
    for _ in range(n):
        text = make_report(sample_findings(rng), rng)
        while min_tokens and len(tokenizer(text)["input_ids"]) < min_tokens:
            text += " " + make_report(sample_findings(rng), rng)
        reports.append(text)
    return reports


def make_tokenizer(seed: int = 0):
    """The offline default tokenizer: WordPiece trained on 512 demo reports."""
    from custom.text import train_wordpiece

    return train_wordpiece(demo_reports(512, seed=seed + 1000))


def make_batch(tokenizer, batch: int, image_size: int, tokens: int | None, seed: int = 0) -> dict:
    """A training batch as custom.data.PretrainDataset collates it: ``image`` (B, 1, S, S) in
    [0, 1], ``input_ids`` / ``attention_mask`` / ``word_ids`` (B, L) and ``report_id`` (B,).
    ``tokens``: L (reports extended to it and truncated at it), or None for natural lengths."""
    import torch

    from custom.text import encode_reports, report_key

    reports = demo_reports(batch, seed=seed, min_tokens=tokens, tokenizer=tokenizer)
    enc = encode_reports(tokenizer, reports, max_length=tokens or 128)
    gen = torch.Generator().manual_seed(seed)
    out = {k: torch.as_tensor(v) for k, v in enc.items()}
    out["image"] = torch.rand(batch, 1, image_size, image_size, generator=gen)
    out["report_id"] = torch.tensor([report_key(r) for r in reports], dtype=torch.int64)
    return out


def build_step(size: str | dict, objective: str, tokenizer, device: str = "cpu", model_overrides: dict | None = None,
               lr: float = 1.0e-4):
    """(network, loss, optimizer) for a size (a :data:`SIZES` name or such a dict) and objective,
    wired as train.yaml wires them."""
    from custom.losses import PretrainLoss
    from custom.engines.pretrained import build_reclf_model
    from custom.optim import build_optimizer

    spec = SIZES[size] if isinstance(size, str) else size
    args = {**spec["model"], **OBJECTIVES[objective], **(model_overrides or {})}
    net = build_reclf_model(tokenizer, image_encoder=spec["image_encoder"], text_config=spec["text_config"],
                            **args).to(device)
    loss = PretrainLoss()
    opt = build_optimizer(net, lr=lr)
    return net, loss, opt


def train_step(net, loss_fn, opt, batch: dict, amp_ctx=None, scaler=None, grad_clip: float = 5.0) -> float:
    """One PretrainTrainer iteration (forward, loss, backward, clip, AdamW step); returns the loss."""
    import contextlib

    import torch

    net.train()
    opt.zero_grad(set_to_none=True)
    with amp_ctx if amp_ctx is not None else contextlib.nullcontext():
        out = net(batch["image"], batch["input_ids"], batch["attention_mask"], batch["word_ids"], batch["report_id"])
    loss = loss_fn(out, batch["report_id"])["loss"]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return float(loss.detach())


def encoder_step(net, batch: dict, opt) -> float:
    """The encoder baseline: image + text encoder forward, a plain sum as the loss, backward and
    the same optimizer step; no projection heads, no contrastive loss."""
    net.train()
    opt.zero_grad(set_to_none=True)
    img = net.image_encoder(batch["image"])
    txt = net.text_encoder(batch["input_ids"], batch["attention_mask"], batch["word_ids"])
    loss = img["global"].mean() + img["local"].mean() + txt["global"].mean() + txt["words"].mean()
    loss.backward()
    opt.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux ≥ 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    hwm = _status_kib("VmHWM")
    return (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def current_rss_mib() -> float:
    rss = _status_kib("VmRSS")
    return (rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


# ---------------------------------------------------------------------------------------------
# one configuration, in its own process
# ---------------------------------------------------------------------------------------------
def run_case(size: str, objective: str, batch: int, steps: int, device: str, threads: int | None) -> dict:
    """Time and peak memory of ``steps`` steps (after one warm-up) of one configuration.

    ``objective == 'encoder'`` runs the encoder baseline."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if torch.device(device).type == "cpu":
        torch.set_flush_denormal(True)  # as PretrainTrainer.run does on CPU (custom/engines/pretrain.py)
    torch.manual_seed(0)
    spec = SIZES[size]
    tokenizer = make_tokenizer()
    net, loss_fn, opt = build_step(size, "convirt" if objective == "encoder" else objective, tokenizer, device)
    data = make_batch(tokenizer, batch, spec["image_size"], spec["tokens"])
    data = {k: v.to(device) for k, v in data.items()}
    cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def one() -> float:
        return encoder_step(net, data, opt) if objective == "encoder" else train_step(net, loss_fn, opt, data)

    if cuda:
        one()  # warm-up (cudnn autotune, allocator)
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        # the first step allocates the AdamW state and the autograd buffers: measure it
        reset_ok = reset_peak_rss()
        base = current_rss_mib()
    times, cpu_times = [], []
    first = True
    for _ in range(steps + (0 if cuda else 1)):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        value = one()
        sync()
        if first and not cuda:
            first = False  # the CPU warm-up is the measured-memory step
            continue
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        memory = {"peak_mib": round(peak, 1), "peak_over_start_mib": round(peak - base, 1),
                  "memory_method": "torch.cuda.max_memory_allocated"}
    else:
        peak = peak_rss_mib()
        memory = {"peak_mib": round(peak, 1), "peak_over_start_mib": round(peak - base, 1),
                  "memory_method": "VmHWM-VmRSS" if reset_ok else "ru_maxrss (not reset)"}
    t = statistics.median(times)
    return {"size": size, "objective": objective, "batch": batch, "steps": len(times),
            "step_s": round(t, 4), "step_s_all": [round(x, 4) for x in times],
            "cpu_s": round(statistics.median(cpu_times), 4), "threads": torch.get_num_threads(),
            "pairs_per_s": round(batch / t, 3), "loss": value, **memory}


def _run_case_subprocess(size, objective, batch, steps, device, threads, timeout) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--_case", json.dumps(
        {"size": size, "objective": objective, "batch": batch, "steps": steps, "device": device, "threads": threads})]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"size": size, "objective": objective, "batch": batch, "error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def summarise(cases: list[dict]) -> dict:
    """Ratios within each (size, batch): step time vs ConVIRT and vs the encoder baseline."""
    groups: dict[tuple[str, int], dict[str, dict]] = {}
    for c in cases:
        if "error" not in c:
            groups.setdefault((c["size"], c["batch"]), {})[c["objective"]] = c
    ratios = []
    for (size, batch), by in groups.items():
        conv = by.get("convirt")
        enc = by.get("encoder")
        for name, c in by.items():
            row = {"size": size, "batch": batch, "objective": name}
            if conv:
                row["time_vs_convirt"] = round(c["step_s"] / conv["step_s"], 3)
                # process CPU time: less sensitive than wall time to other jobs on shared cores
                row["cpu_vs_convirt"] = round(c["cpu_s"] / conv["cpu_s"], 3)
            if enc:
                row["time_vs_encoders"] = round(c["step_s"] / enc["step_s"], 3)
            if name.startswith("reclf") and conv:
                row["goal_time_vs_convirt"] = STEP_GOAL
                # on CPU the process-time ratio (wall time counts other jobs on shared cores)
                key = "time_vs_convirt" if c.get("memory_method", "").startswith("torch.cuda") else "cpu_vs_convirt"
                row["meets_goal"] = bool(row[key] <= STEP_GOAL)
            ratios.append(row)
    return {"ratios": ratios}


def markdown(result: dict) -> str:
    lines = [
        "# Training-step throughput",
        "",
        f"`python -m benchmarks.throughput {' '.join(result['argv'])}` on {result['machine']}; "
        f"device {result['device']}, torch threads {result['threads']}. One step = forward, "
        "PretrainLoss, backward, clip, AdamW. Median of the measured steps after a warm-up; each row "
        "in a fresh process. Peak memory: " + ("torch.cuda.max_memory_allocated." if result["device"].startswith("cuda")
                                                 else "growth of the peak resident set (VmHWM) over the resident set before the first step (model, batch and imports excluded)."),
        "",
        f"Goals: RECLF step ≤ {STEP_GOAL:.2f}× ConVIRT's at every size; data pipeline ≥ {PIPELINE_GOAL:.0f}× the real-size step.",
        "",
        "| size | B | objective | step s (wall) | CPU s | pairs/s | × ConVIRT (wall) | × ConVIRT (CPU) | × encoders | peak Δ MiB | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratio = {(r["size"], r["batch"], r["objective"]): r for r in result["summary"]["ratios"]}
    for c in result["cases"]:
        if "error" in c:
            lines.append(f"| {c['size']} | {c['batch']} | {c['objective']} | error: {c['error'][:80]} | | | | | | | |")
            continue
        r = ratio.get((c["size"], c["batch"], c["objective"]), {})
        goal = ""
        if "meets_goal" in r:
            goal = f"≤{STEP_GOAL:.2f}× {'met' if r['meets_goal'] else 'NOT met'}"
        lines.append(
            f"| {c['size']} | {c['batch']} | {c['objective']} | {c['step_s']:.3f} | {c['cpu_s']:.3f} | {c['pairs_per_s']:.2f} | "
            f"{r.get('time_vs_convirt', float('nan')):.3f} | {r.get('cpu_vs_convirt', float('nan')):.3f} | "
            f"{r.get('time_vs_encoders', float('nan')):.3f} | "
            f"{c['peak_over_start_mib']:.0f} | {goal} |"
        )
    pipe = result.get("pipeline")
    if pipe:
        lines += ["", "## Data pipeline vs step", ""]
        if "error" in pipe:
            lines.append(f"Pipeline benchmark unavailable: {pipe['error']}")
        else:
            lines.append(f"Pipeline (benchmarks.pipeline.measure_pipeline): `{json.dumps(pipe.get('raw'))[:400]}`")
            for row in pipe.get("ratios", []):
                lines.append(
                    f"- {row['label']}: pipeline {row['pipeline_pairs_per_s']:.1f} pairs/s ÷ step "
                    f"{row['step_pairs_per_s']:.2f} pairs/s = **{row['ratio']:.2f}×** (goal ≥ {PIPELINE_GOAL:.0f}×: "
                    f"{'met' if row['ratio'] >= PIPELINE_GOAL else 'NOT met'})"
                )
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _warm_rates(raw: Any) -> list[tuple[str, float]]:
    """(label, pairs/s) of the warm-cache entries of measure_pipeline's dict, whatever its nesting
    (the other helper's format: pairs/s per (workers, cold|warm))."""
    found: list[tuple[str, float]] = []

    def walk(obj: Any, path: list[str]) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, path + [str(k)])
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and "warm" in "/".join(path).lower():
            found.append(("/".join(path), float(obj)))

    walk(raw.get("pairs_per_s", raw) if isinstance(raw, dict) else raw, [])
    return found


def pipeline_section(cases: list[dict], image_size: int, n: int) -> dict:
    try:
        from benchmarks.pipeline import measure_pipeline  # the image-cache helper's benchmark
    except Exception as err:  # absent or broken: say so, measure the rest
        return {"error": f"benchmarks.pipeline.measure_pipeline not importable ({type(err).__name__}: {err})"}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            raw = measure_pipeline(n, image_size, (0, 2), tmp)
        except TypeError:
            raw = measure_pipeline(n=n, image_size=image_size, workers=(0, 2), tmp=tmp)
    real = [c for c in cases if c.get("size") == "real" and "error" not in c and c["objective"].startswith("reclf")]
    warm = _warm_rates(raw)
    rows = []
    if warm and real:
        best_label, best = max(warm, key=lambda kv: kv[1])
        for c in real:
            rows.append({"label": f"{c['objective']} B={c['batch']} vs {best_label}", "pipeline_pairs_per_s": best,
                         "step_pairs_per_s": c["pairs_per_s"], "ratio": best / c["pairs_per_s"]})
    return {"raw": raw, "ratios": rows}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="demo,real")
    p.add_argument("--batch", default="16,32", help="batch sizes at the real size (demo: 16)")
    p.add_argument("--demo_batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="measured steps per configuration (after 1 warm-up)")
    p.add_argument("--real_steps", type=int, default=None, help="measured steps at the real size (default --steps)")
    p.add_argument("--objectives", default="encoder," + ",".join(OBJECTIVES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--pipeline", action="store_true", help="also run benchmarks.pipeline.measure_pipeline")
    p.add_argument("--pipeline_n", type=int, default=64)
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "throughput"), help="path without .json/.md")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args._case:
        spec = json.loads(args._case)
        print(json.dumps(run_case(**spec)))
        return {}
    import torch

    threads = args.threads or torch.get_num_threads()
    cases: list[dict] = []
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        batches = [args.demo_batch] if size == "demo" else [int(b) for b in args.batch.split(",")]
        steps = args.steps if size == "demo" else (args.real_steps or args.steps)
        for b in batches:
            for objective in [o.strip() for o in args.objectives.split(",") if o.strip()]:
                c = _run_case_subprocess(size, objective, b, steps, args.device, threads, args.timeout)
                cases.append(c)
                print(json.dumps({k: v for k, v in c.items() if k != "step_s_all"}), flush=True)
                _write(args, argv, threads, cases, None)  # partial results survive an interrupted run
    pipeline = pipeline_section(cases, SIZES["real"]["image_size"], args.pipeline_n) if args.pipeline else None
    result = _write(args, argv, threads, cases, pipeline)
    print(markdown(result))
    return result


def _write(args: argparse.Namespace, argv, threads: int, cases: list[dict], pipeline: dict | None) -> dict:
    import torch

    result = {"argv": list(argv if argv is not None else sys.argv[1:]), "device": args.device, "threads": threads,
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
              "cases": cases, "summary": summarise(cases), "notes": []}
    if pipeline is not None:
        result["pipeline"] = pipeline
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(result))
    return result


if __name__ == "__main__":
    main()
