"""GPU check of the real-size RECLF pretraining step: precision, memory format, batch size, DDP.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.json      # on a CUDA machine
    python -m benchmarks.gpu_check --dry_run --out /tmp/gpu_check.json          # anywhere (CPU)

Sections (each result in the JSON written to ``--out``):

1. ``steps``: the full training step (forward, PretrainLoss, backward, clip, AdamW; the same
   ``benchmarks.throughput.train_step`` the throughput benchmark times) of RECLF at the real size
   (224 px ResNet-50, 12-layer 768-d BERT from config, 128 tokens, all-pairs local term) in
   fp32, AMP fp16 + GradScaler, bf16 autocast, and each AMP mode with channels_last (image tower
   and images NHWC, :func:`custom.engine.channels_last_tower`). pairs/s and peak memory
   (``torch.cuda.max_memory_allocated``; on CPU the growth of the peak resident set).
2. ``max_batch``: the largest batch whose step fits, with the all-pairs (B²) local term and the
   fastest AMP mode: doubling from ``--batch`` until out-of-memory, then bisection;
   ``torch.cuda.empty_cache()`` between tries. Capped at ``--max_batch_cap``.
3. ``ddp``: ``torchrun --standalone --nproc_per_node=<visible GPUs>`` re-launches this script
   as DDP workers (NCCL; gloo on CPU) at the per-process batch ``--batch``; total pairs/s over
   all processes and each rank's peak memory.

The goal printed beside the figures: ≥ 725 pairs/s, i.e. a 217k-pair MIMIC-CXR epoch in under
5 minutes. ``--dry_run`` runs every section at a tiny size (32 px, ResNet-18, 2-layer BERT,
B = 4, 2 steps; bf16 autocast on CPU; fp16 skipped with the reason; the batch search capped at 8;
DDP with 2 gloo processes) so that the script is exercised by ``tests/test_gpu_check.py`` and
cannot rot between GPU runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.throughput import (
    SIZES,
    build_step,
    current_rss_mib,
    make_batch,
    make_tokenizer,
    peak_rss_mib,
    reset_peak_rss,
    train_step,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_PAIRS_PER_S = 725.0  # 217k MIMIC-CXR pairs in < 5 min
MIMIC_PAIRS = 217_000
TINY = {"image_size": 32, "image_encoder": "resnet18", "tokens": 32,
        "text_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
        "model": {"embed_dim": 32, "local_dim": 32, "match_dim": 16}}
VARIANTS = (  # (name, amp, channels_last)
    ("fp32", "false", False),
    ("fp16", "fp16", False),
    ("bf16", "bf16", False),
    ("fp16_channels_last", "fp16", True),
    ("bf16_channels_last", "bf16", True),
)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


class Bench:
    """A model, optimizer and batch maker for one size on one device."""

    def __init__(self, spec: dict, device: torch.device, objective: str = "reclf") -> None:
        self.spec, self.device, self.objective = spec, device, objective
        self.tokenizer = make_tokenizer()

    def build(self, channels_last: bool = False):
        from custom.engine import channels_last_tower

        torch.manual_seed(0)
        net, loss, opt = build_step(self.spec, self.objective, self.tokenizer, str(self.device))
        channels_last_tower(net, channels_last)
        return net, loss, opt

    def batch(self, size: int, channels_last: bool = False) -> dict:
        data = make_batch(self.tokenizer, size, self.spec["image_size"], self.spec["tokens"])
        data = {k: v.to(self.device) for k, v in data.items()}
        if channels_last:
            data["image"] = data["image"].contiguous(memory_format=torch.channels_last)
        return data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(amp: str, device: torch.device):
    """(autocast context, GradScaler or None) for an amp mode, as custom.engine resolves it."""
    from custom.utils import amp_dtype, autocast

    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (autocast(device, amp) if dtype is not None else contextlib.nullcontext()), scaler


def _memory_start(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    reset_peak_rss()
    return current_rss_mib()


def _memory_peak(device: torch.device, start: float) -> dict[str, float]:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = peak_rss_mib()
    return {"peak_mib": round(peak, 1), "peak_over_start_mib": round(peak - start, 1)}


def time_steps(net, loss_fn, opt, data, amp: str, device: torch.device, steps: int, warmup: int = 1) -> dict:
    """Median step time over ``steps`` after ``warmup`` steps; peak memory over all of them."""
    scaler = _amp(amp, device)[1]  # one GradScaler across the steps, as in training
    start = _memory_start(device)
    times = []
    for n in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        train_step(net, loss_fn, opt, data, amp_ctx=_amp(amp, device)[0], scaler=scaler)
        _sync(device)
        if n >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    batch = int(data["image"].shape[0])
    return {"batch": batch, "step_s": round(step, 4), "pairs_per_s": round(batch / step, 2), **_memory_peak(device, start)}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def section_steps(bench: Bench, batch: int, steps: int) -> list[dict]:
    rows = []
    for name, amp, channels_last in VARIANTS:
        row: dict[str, Any] = {"name": name, "amp": amp, "channels_last": channels_last}
        if amp == "fp16" and bench.device.type != "cuda":
            row["skipped"] = "fp16 autocast + GradScaler needs CUDA (CPU runs bf16)"
            rows.append(row)
            continue
        try:
            net, loss_fn, opt = bench.build(channels_last)
            row.update(time_steps(net, loss_fn, opt, bench.batch(batch, channels_last), amp, bench.device, steps))
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            row["skipped"] = f"out of memory at batch {batch}"
        finally:
            net = loss_fn = opt = None
            _free(bench.device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def section_max_batch(bench: Bench, start: int, cap: int, amp: str, channels_last: bool, tolerance: int) -> dict:
    """Largest batch (≤ cap) whose step fits: doubling from ``start``, then bisection down to
    ``tolerance`` pairs. Each try is one step of a model built once (AdamW state included)."""
    net, loss_fn, opt = bench.build(channels_last)
    tried: list[dict] = []

    def fits(size: int) -> bool:
        try:
            result = time_steps(net, loss_fn, opt, bench.batch(size, channels_last), amp, bench.device, 1, warmup=0)
            tried.append({"batch": size, "fits": True, **result})
            return True
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            opt.zero_grad(set_to_none=True)
            tried.append({"batch": size, "fits": False})
            return False
        finally:
            _free(bench.device)

    good, bad = 0, None
    size = max(1, start)
    while size <= cap:
        if fits(size):
            good = size
            size *= 2
        else:
            bad = size
            break
    capped = bad is None
    if bad is not None:
        while bad - good > max(1, tolerance):
            mid = (good + bad) // 2
            if fits(mid):
                good = mid
            else:
                bad = mid
    net = loss_fn = opt = None
    _free(bench.device)
    best = max((t for t in tried if t["fits"] and t["batch"] == good), key=lambda t: t["batch"], default=None)
    return {"max_batch": good, "first_oom": bad, "capped": capped, "cap": cap, "amp": amp,
            "channels_last": channels_last, "local_negatives": "all", "tried": tried,
            "pairs_per_s_at_max": best["pairs_per_s"] if best else None}


# ---------------------------------------------------------------------------------------------
# DDP: this script re-launched under torchrun
# ---------------------------------------------------------------------------------------------
def ddp_worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from custom.distributed import init_process_group

    device = init_process_group()  # NCCL on GPU (one per LOCAL_RANK), gloo on CPU
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cpu":
        torch.set_num_threads(1)
    bench = Bench(TINY if args.dry_run else SIZES["real"], device)
    net, loss_fn, opt = bench.build(args.channels_last)
    ddp = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    data = bench.batch(args.batch, args.channels_last)
    scaler = _amp(args.amp, device)[1]
    start = _memory_start(device)
    times = []
    for n in range(1 + args.steps):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        train_step(ddp, loss_fn, opt, data, amp_ctx=_amp(args.amp, device)[0], scaler=scaler)
        _sync(device)
        dist.barrier()  # a step ends when the slowest rank is done
        if n:
            times.append(time.perf_counter() - t0)
    memory = _memory_peak(device, start)
    gathered = [None] * world
    dist.all_gather_object(gathered, memory)
    if rank == 0:
        step = statistics.median(times)
        result = {"world_size": world, "backend": dist.get_backend(), "batch_per_rank": args.batch, "amp": args.amp,
                  "channels_last": args.channels_last, "step_s": round(step, 4),
                  "pairs_per_s": round(world * args.batch / step, 2), "per_rank_memory": gathered}
        with open(args._ddp_out, "w", encoding="utf-8") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def section_ddp(args: argparse.Namespace, nproc: int, amp: str, channels_last: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "benchmarks.gpu_check", "--_ddp_worker", "--_ddp_out", out, "--batch", str(args.batch),
               "--steps", str(args.steps), "--amp", amp] + (["--channels_last"] if channels_last else []) + (
               ["--dry_run"] if args.dry_run else [])
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0 or not os.path.isfile(out):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            return {"error": f"torchrun exited {proc.returncode}: " + " | ".join(tail), "world_size": nproc}
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "gpu_check.json"))
    p.add_argument("--dry_run", action="store_true", help="tiny sizes on any device (CPU: bf16, 2 gloo ranks)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch", type=int, default=None, help="per-process batch (default 32; dry run 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps after a warm-up (default 5; dry run 2)")
    p.add_argument("--max_batch_cap", type=int, default=None, help="default 2048; dry run 8")
    p.add_argument("--nproc", type=int, default=None, help="DDP processes (default: visible GPUs; dry run on CPU 2)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: steps,max_batch,ddp")
    p.add_argument("--timeout", type=int, default=1800)
    # worker-only
    p.add_argument("--_ddp_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_ddp_out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--amp", default="true", help=argparse.SUPPRESS)
    p.add_argument("--channels_last", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batch = args.batch or (4 if args.dry_run else 32)
    args.steps = args.steps or (2 if args.dry_run else 5)
    args.max_batch_cap = args.max_batch_cap or (8 if args.dry_run else 2048)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args._ddp_worker:
        ddp_worker(args)
        return {}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    else:
        # the dry run is tiny: one thread (several pay an OpenMP barrier per op, costly on shared cores)
        torch.set_num_threads(1 if args.dry_run else torch.get_num_threads())
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    spec = TINY if args.dry_run else SIZES["real"]
    bench = Bench(spec, device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device_type": device.type, "torch": torch.__version__, "dry_run": bool(args.dry_run),
        "size": {k: spec[k] for k in ("image_size", "image_encoder", "tokens", "text_config", "model")},
        "objective": "reclf", "batch": args.batch, "steps": args.steps,
        "goal_pairs_per_s": GOAL_PAIRS_PER_S, "mimic_pairs": MIMIC_PAIRS,
    }
    if "steps" not in skip:
        result["steps_by_variant"] = section_steps(bench, args.batch, args.steps)
    ran = [r for r in result.get("steps_by_variant", []) if "pairs_per_s" in r]
    best = max(ran, key=lambda r: r["pairs_per_s"], default=None)
    # the fastest AMP variant drives the batch search and DDP (fp16 on CUDA, bf16 on CPU by default)
    amp, channels_last = (best["amp"], best["channels_last"]) if best else ("true", False)
    if "max_batch" not in skip:
        result["max_batch"] = section_max_batch(bench, args.batch, args.max_batch_cap, amp, channels_last,
                                                tolerance=1 if args.dry_run else 8)
        print(json.dumps({k: v for k, v in result["max_batch"].items() if k != "tried"}), flush=True)
    if "ddp" not in skip:
        nproc = args.nproc or (torch.cuda.device_count() if device.type == "cuda" else 2)
        result["ddp"] = section_ddp(args, nproc, amp, channels_last)
        print(json.dumps(result["ddp"]), flush=True)
    rates = [r["pairs_per_s"] for r in ran]
    if result.get("ddp", {}).get("pairs_per_s"):
        rates.append(result["ddp"]["pairs_per_s"])
    if result.get("max_batch", {}).get("pairs_per_s_at_max"):
        rates.append(result["max_batch"]["pairs_per_s_at_max"])
    result["best_pairs_per_s"] = max(rates) if rates else None
    result["best_variant"] = best["name"] if best else None
    result["meets_goal"] = bool(rates) and max(rates) >= GOAL_PAIRS_PER_S
    result["mimic_epoch_minutes"] = round(MIMIC_PAIRS / max(rates) / 60, 2) if rates else None
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    goal = "met" if result["meets_goal"] else "NOT met"
    print(f"best {result['best_pairs_per_s']} pairs/s (goal ≥ {GOAL_PAIRS_PER_S:.0f}: {goal}; "
          f"a {MIMIC_PAIRS}-pair epoch in {result['mimic_epoch_minutes']} min){' [dry run]' if args.dry_run else ''}")
    return result


if __name__ == "__main__":
    main()
