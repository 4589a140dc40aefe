"""Speed and memory of the local (B²) contrastive term: GLoRIA's loop vs our batched objectives.

    python -m benchmarks.local_loss [--batch_sizes "16,32"] [--threads 2] [--repeats 3] [--big]

Cases, all on the same 768-d encoder features (R = 19×19 = 361 regions, T = 97 word slots with
real lengths uniform in 40..97, padding after):

- ``gloria_loop``: :func:`benchmarks.reference.gloria_loop_loss`, GLoRIA's released local loss
  (loop over captions, attention in 768-d). The reference every ratio is taken against.
- ``gloria_ours``: Linear 768→D_l on regions and words, ``GloriaPoolingScorer.score_all``,
  logits ×10, ``LocalContrastiveLoss``.
- ``reclf_all``: as RECLFModel does it: Linear 768→D_l, + a projected ``GridPositionCode``,
  ``RelationScorer.score_all`` (RECLFModel's default config), logits ×10, ``LocalContrastiveLoss``.
- ``reclf_topk``: the same with ``score_topk`` (K = RECLFModel's default), candidates from a
  global similarity of mean-pooled features.

Each case runs in its own subprocess (a clean ``ru_maxrss`` and allocator per case) with
``torch.set_num_threads(threads)``. Time = median forward+backward over ``repeats`` after one
warm-up; peak memory = increase of ``ru_maxrss`` over its value just before the first forward.
Results are printed as a table and written to ``benchmarks/results/local_loss.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results", "local_loss.json")

GRID = 19  # GLoRIA's 19×19 grid of 768-d features (ResNet-50 layer3 at 299 px)
REGIONS = GRID * GRID
WORDS = 97  # word slots per report
MIN_WORDS = 40  # real lengths are uniform in [MIN_WORDS, WORDS]
FEATURES = 768
LOGIT_SCALE = 10.0
CASES = ("gloria_loop", "gloria_ours", "reclf_all", "reclf_topk")
TARGET_BATCH = 32
# (case, metric, max ratio to gloria_loop at TARGET_BATCH)
TARGETS = (("reclf_all", "time", 0.5), ("reclf_all", "memory", 0.25), ("reclf_topk", "time", 0.2))
MEMORY_BUDGET_MIB = 24 * 1024  # the --big case must fit in 24 GB


# ---------------------------------------------------------------------------------------------
# one case, inside its own process
# ---------------------------------------------------------------------------------------------
def _maxrss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mib() -> float:
    """Current resident set size (for the record: shows whether imports left a higher peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def model_defaults() -> dict[str, Any]:
    """RECLFModel's default keyword arguments: the benchmark measures the default configuration."""
    from custom.nets.reclf import RECLFModel

    params = inspect.signature(RECLFModel.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def make_features(batch: int, seed: int = 0):
    """Encoder outputs: regions (B, R, 768), words (B, T, 768) zero after each report's length,
    lengths (B,) uniform in [MIN_WORDS, WORDS], mask (B, T)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(MIN_WORDS, WORDS + 1, (batch,), generator=gen)
    mask = torch.arange(WORDS).unsqueeze(0) < lengths.unsqueeze(1)
    regions = torch.randn(batch, REGIONS, FEATURES, generator=gen)
    words = torch.randn(batch, WORDS, FEATURES, generator=gen) * mask.unsqueeze(-1)
    return regions, words, lengths, mask


def build_step(case: str, batch: int, chunk_pairs: int | None):
    """A closure running one forward + backward of ``case``, and the config it measures."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    regions_768, words_768, lengths, mask = make_features(batch)
    regions_768.requires_grad_()
    words_768.requires_grad_()  # the encoders' outputs: their gradients are part of the cost

    if case == "gloria_loop":
        from benchmarks.reference import gloria_loop_loss

        def step() -> float:
            regions_768.grad = words_768.grad = None
            loss = gloria_loop_loss(regions_768, words_768, lengths.tolist(), 4.0, 5.0, LOGIT_SCALE)
            loss.backward()
            return float(loss.detach())

        return step, {"feature_dim": FEATURES}

    from custom.losses import LocalContrastiveLoss
    from custom.nets.reclf import GridPositionCode
    from custom.nets.scorers import GloriaPoolingScorer, RelationScorer

    cfg = model_defaults()
    if chunk_pairs is not None:
        cfg["chunk_pairs"] = chunk_pairs
    local_dim = cfg["local_dim"]
    modules = nn.ModuleDict(
        {"region_projection": nn.Linear(FEATURES, local_dim), "word_projection": nn.Linear(FEATURES, local_dim)}
    )
    if case == "gloria_ours":
        modules["scorer"] = GloriaPoolingScorer(
            cfg["attention_scale"], cfg["pooling_scale"], cfg["gloria_pooling"], learn_scales=cfg["learn_scales"],
            chunk_pairs=cfg.get("chunk_pairs"), checkpoint_chunks=cfg["checkpoint_chunks"],
        )
    elif case in ("reclf_all", "reclf_topk"):
        modules["position_code"] = GridPositionCode(cfg["position_dim"])
        modules["position_projection"] = nn.Linear(cfg["position_dim"], local_dim)
        modules["scorer"] = RelationScorer(
            local_dim, cfg["position_dim"], cfg["match_dim"], srm=cfg["srm"], irm=cfg["irm"],
            srm_layers=cfg["srm_layers"], srm_heads=cfg["srm_heads"], srm_word_bias=cfg["srm_word_bias"],
            attention_scale=cfg["attention_scale"], learn_scales=cfg["learn_scales"],
            chunk_pairs=cfg.get("chunk_pairs"), checkpoint_chunks=cfg["checkpoint_chunks"],
        )
    else:
        raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
    loss_fn = LocalContrastiveLoss()
    report_ids = torch.arange(batch)
    same_report = torch.eye(batch, dtype=torch.bool)
    scorer = modules["scorer"]

    def step() -> float:
        modules.zero_grad(set_to_none=True)
        regions_768.grad = words_768.grad = None
        regions = modules["region_projection"](regions_768)  # (B, R, D_l)
        words = modules["word_projection"](words_768)  # (B, T, D_l)
        positions = None
        if "position_code" in modules:  # as RECLFModel.encode_image does
            positions = modules["position_code"](GRID, GRID)  # (R, Dp)
            regions = regions + modules["position_projection"](positions)
        if case == "reclf_topk":
            # candidate selection: a global similarity from mean-pooled encoder features
            image_global = F.normalize(regions_768.mean(1), dim=-1)
            text_global = F.normalize((words_768 * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1), dim=-1)
            cand = scorer.score_topk(regions, positions, words, mask, image_global @ text_global.t(), same_report, cfg["topk"])
            outputs = {
                "local_row_logits": LOGIT_SCALE * cand["row_scores"], "local_row_valid": cand["row_valid"],
                "local_col_logits": LOGIT_SCALE * cand["col_scores"], "local_col_valid": cand["col_valid"],
            }
        else:
            outputs = {"local_logits": LOGIT_SCALE * scorer.score_all(regions, positions, words, mask)}
        loss = loss_fn(outputs, report_ids)
        loss.backward()
        return float(loss.detach())

    keys = ["local_dim", "position_dim", "match_dim", "srm", "irm", "srm_layers", "srm_heads", "srm_word_bias",
            "chunk_pairs", "checkpoint_chunks"] + (["topk"] if case == "reclf_topk" else [])
    if case == "gloria_ours":
        keys = ["local_dim", "gloria_pooling", "chunk_pairs", "checkpoint_chunks"]
    return step, {k: cfg[k] for k in keys}


def run_case(case: str, batch: int, threads: int, repeats: int, chunk_pairs: int | None) -> dict[str, Any]:
    """Time and peak memory of one case (call in a fresh process)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    step, config = build_step(case, batch, chunk_pairs)
    rss_before, maxrss_before = _rss_mib(), _maxrss_mib()
    times, cpu_times, losses = [], [], []
    for it in range(1 + repeats):  # the first run is the warm-up
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(step())
        if it > 0:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "case": case, "batch": batch, "threads": threads, "repeats": repeats, "config": config,
        "time_s": statistics.median(times), "times_s": times,
        # CPU seconds of all threads: with 1 thread, robust to other processes sharing the cores
        "cpu_s": statistics.median(cpu_times), "cpu_times_s": cpu_times,
        "peak_mib": _maxrss_mib() - maxrss_before,
        "rss_before_mib": rss_before, "maxrss_before_mib": maxrss_before, "loss": losses[-1],
        "chunk_override": chunk_pairs is not None,  # not RECLFModel's default configuration
    }


# ---------------------------------------------------------------------------------------------
# the driver: one subprocess per case, table, targets, JSON
# ---------------------------------------------------------------------------------------------
def spawn(case: str, batch: int, threads: int, repeats: int, chunk_pairs: int | None = None) -> dict[str, Any]:
    """Run one case in a fresh interpreter from the repository root; its result or the error."""
    cmd = [sys.executable, "-m", "benchmarks.local_loss", "--case", case, "--batch", str(batch),
           "--threads", str(threads), "--repeats", str(repeats)]
    if chunk_pairs is not None:
        cmd += ["--chunk_pairs", str(chunk_pairs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"  running {case} B={batch}" + (f" chunk_pairs={chunk_pairs}" if chunk_pairs else "") + " ...",
          file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"case": case, "batch": batch, "chunk_pairs": chunk_pairs, "error": f"exit {proc.returncode}: {tail}"}


def _ratio(result: dict, reference: dict | None, key: str) -> float | None:
    if reference is None or "error" in result or "error" in reference or not reference[key]:
        return None
    return result[key] / reference[key]


def _fmt(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"


def format_table(results: list[dict]) -> str:
    """Rows: case × batch, with time/memory ratios to the GLoRIA loop at the same batch size."""
    refs = {r["batch"]: r for r in results if r["case"] == "gloria_loop" and "error" not in r}
    head = (f"{'case':<12} {'B':>4} {'chunk':>6} {'time s':>8} {'(min-max)':>15} {'cpu s':>8} {'peak MiB':>9} "
            f"{'time/ref':>9} {'cpu/ref':>8} {'mem/ref':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['case']:<12} {r['batch']:>4}  FAILED: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        ref = refs.get(r["batch"])
        tr, cr, mr = (_ratio(r, ref, key) for key in ("time_s", "cpu_s", "peak_mib"))
        chunk = r["config"].get("chunk_pairs", "-")
        spread = f"({min(r['times_s']):.2f}-{max(r['times_s']):.2f})"
        lines.append(
            f"{r['case']:<12} {r['batch']:>4} {chunk!s:>6} {r['time_s']:>8.3f} {spread:>15} {r['cpu_s']:>8.3f} "
            f"{r['peak_mib']:>9.0f} {_fmt(tr):>9} {_fmt(cr):>8} {_fmt(mr):>8}"
        )
    return "\n".join(lines)


def check_targets(results: list[dict]) -> list[dict]:
    """The targets at B = TARGET_BATCH, each with its measured ratio and pass/fail."""
    by_key = {(r["case"], r["batch"]): r for r in results if "error" not in r and not r.get("chunk_override")}
    ref = by_key.get(("gloria_loop", TARGET_BATCH))
    checks = []
    for case, metric, limit in TARGETS:
        res = by_key.get((case, TARGET_BATCH))
        ratio = None if res is None else _ratio(res, ref, "time_s" if metric == "time" else "peak_mib")
        checks.append({"case": case, "batch": TARGET_BATCH, "metric": metric, "max_ratio": limit, "ratio": ratio,
                       "passed": None if ratio is None else ratio <= limit})
    return checks


def run_big(threads: int, repeats: int, batch: int = 128) -> list[dict]:
    """RECLF all-negatives at B=128 with the default chunk size; smaller chunks until it fits."""
    out = [spawn("reclf_all", batch, threads, repeats)]
    chunk = out[-1].get("config", {}).get("chunk_pairs", 512)
    while ("error" in out[-1] or out[-1]["peak_mib"] > MEMORY_BUDGET_MIB) and chunk > 1:
        chunk //= 2
        out.append(spawn("reclf_all", batch, threads, repeats, chunk_pairs=chunk))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", default="16,32", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads per case")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--big", action="store_true", help="also RECLF all-negatives at B=128")
    parser.add_argument("--big_repeats", type=int, default=1, help="timed runs of the B=128 case")
    parser.add_argument("--cases", default=",".join(CASES), help="subset of the cases")
    parser.add_argument("--chunk_sweep", default="", help=f"extra reclf_all runs at B={TARGET_BATCH} with these chunk_pairs, e.g. '128,64'")
    parser.add_argument("--out", default=RESULTS, help="JSON results file")
    # internal: run one case in this process and print its result
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk_pairs", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        result = run_case(args.case, args.batch, args.threads, args.repeats, args.chunk_pairs)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    cases = [c for c in args.cases.split(",") if c.strip()]
    load_start = os.getloadavg()
    results = [spawn(case, b, args.threads, args.repeats) for b in batches for case in cases]
    for chunk in (int(c) for c in args.chunk_sweep.split(",") if c.strip()):
        results.append(spawn("reclf_all", TARGET_BATCH, args.threads, args.repeats, chunk_pairs=chunk))
    if args.big:
        results += run_big(args.threads, args.big_repeats)
    load_end = os.getloadavg()

    print(f"\nlocal loss, forward+backward: R={REGIONS} regions, T={WORDS} word slots (lengths {MIN_WORDS}..{WORDS}), "
          f"{FEATURES}-d features, {args.threads} threads, median of {args.repeats} after a warm-up "
          f"(B=128: {args.big_repeats}); peak = ru_maxrss increase; cpu = process CPU seconds (all threads)")
    print(f"load average at start / end: {load_start[0]:.2f} / {load_end[0]:.2f} on {os.cpu_count()} CPUs")
    if args.threads > 1 and max(load_start[0], load_end[0]) > (os.cpu_count() or 1) - args.threads + 1.5:
        # an OpenMP op with several threads waits for its slowest thread: when another process holds
        # a core, wall times inflate several-fold and erratically (measured here: 2-10x)
        print("WARNING: other processes share these CPUs; wall times with --threads > 1 are unreliable. "
              "Compare 'cpu s' from a --threads 1 run.")
    print(format_table(results))
    checks = check_targets(results)
    print(f"\ntargets at B={TARGET_BATCH} (ratio to gloria_loop measured in this run):")
    for c in checks:
        status = "n/a" if c["passed"] is None else ("PASS" if c["passed"] else "MISS")
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.3f}"
        print(f"  {c['case']:<11} {c['metric']:<6} <= {c['max_ratio']:<4}  measured {ratio:>6}  {status}")
    big = [r for r in results if r["batch"] == 128 and "error" not in r]
    if args.big:
        fits = [r for r in big if r["peak_mib"] <= MEMORY_BUDGET_MIB]
        if fits:
            r = fits[0]
            print(f"\nB=128 reclf_all: {r['time_s']:.1f} s, peak {r['peak_mib'] / 1024:.2f} GiB with chunk_pairs="
                  f"{r['config']['chunk_pairs']} (budget {MEMORY_BUDGET_MIB / 1024:.0f} GiB): fits")
        else:
            print("\nB=128 reclf_all: did not fit in the budget with any chunk size tried")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({
            "setup": {"regions": REGIONS, "word_slots": WORDS, "min_words": MIN_WORDS, "feature_dim": FEATURES,
                      "threads": args.threads, "repeats": args.repeats, "big_repeats": args.big_repeats,
                      "logit_scale": LOGIT_SCALE, "load_average_start_end": [load_start[0], load_end[0]],
                      "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "results": results,
            "targets": checks,
        }, f, indent=2)
    print(f"\nwritten {os.path.relpath(args.out, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
