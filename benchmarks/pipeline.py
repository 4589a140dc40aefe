"""Throughput of the pretraining data pipeline alone, and the memory of a cached dataset.

    python -m benchmarks.pipeline [--n 2000] [--image_size 224] [--workers 0,2] [--out DIR]
                                  [--tmp DIR] [--rss_items 1000,20000] [--skip_rss]

Pipeline: a generated set of full-size radiographs (``n`` files, sides 2,000-3,000 px, 70 % JPG,
20 % PNG, 10 % DICOM written by pydicom with 12-bit pixel data; smooth shapes and noise, so the
codecs do real work) with short reports -> :class:`custom.data.PretrainDataset` (augmentation on)
with a ``cache_dir`` -> :func:`custom.data.make_loader` (batch 32, shuffled, collate included)
-> one epoch. For each DataLoader worker count:

- ``cold``: the cache folder starts empty: the dataset's up-front pass decodes every file into
  the uint8 cache (threads, one per core), then one epoch reads it;
- ``warm``: a second dataset on the now full cache (keys only, no decode), then one epoch.

pairs/s = pairs in the epoch / (dataset construction + epoch), so cold includes the decode.

Memory: a subprocess per case builds a ``PretrainDataset`` of 1k and of 20k items and reports
the growth of VmRSS (``/proc/self/status``) over the loaded datalist. To stay cheap the items
repeat 8 small source images (their paths and the reports are duplicated, so the cache holds
only those 8 records; the dataset still holds one key, path and token row per item, so what grows
is the per-item bookkeeping, not pixels); the in-memory mode (no ``cache_dir``) decodes every
item and so shows the growth the cache avoids (S² bytes an item, uint8).

Writes ``<out>/pipeline.json`` and ``<out>/pipeline.md`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
BATCH = 32

_FINDINGS = ["opacity", "effusion", "nodule", "pneumothorax", "consolidation", "atelectasis", "edema"]
_PLACES = ["left upper zone", "right lower zone", "left base", "right apex", "both lungs", "retrocardiac region"]


# ---- data -----------------------------------------------------------------------------------


def _radiograph(rng: np.random.Generator, rows: int, cols: int):
    """A smooth (rows, cols) uint8 PIL image: upsampled low-res noise + a vertical gradient +
    fine noise. Generated at low resolution and upsampled by PIL, so a 3,000 px image takes ~30 ms."""
    from PIL import Image

    coarse = (rng.random((12, 10)) * 200).astype(np.uint8)
    image = Image.fromarray(coarse).resize((cols, rows), Image.BICUBIC)
    gradient = np.linspace(0, 40, rows, dtype=np.float32)[:, None]
    # sensor-like noise, so the codecs cannot compress a flat field; a tiled 256 px patch is ~10x
    # cheaper to make than full-size noise and just as hard to compress locally
    tile = rng.integers(0, 12, size=(256, 256), dtype=np.uint8)
    fine = np.tile(tile, (rows // 256 + 1, cols // 256 + 1))[:rows, :cols]
    array = np.clip(np.asarray(image, dtype=np.float32) + gradient + fine, 0, 255).astype(np.uint8)
    return array


def _write_dicom(path: str, array: np.ndarray) -> None:
    """A real single-frame DX DICOM file (explicit VR little endian, 12 bits stored in 16)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "BENCH"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.139, 0.139]
    ds.PixelData = (array.astype(np.uint16) << 4).tobytes()  # 8 -> 12 bits
    ds.save_as(path, enforce_file_format=True)


def generate_radiographs(n: int, folder: str, seed: int = 0, sides: tuple[int, int] = (2000, 3000)) -> list[dict]:
    """``n`` full-size radiographs in ``folder`` (reused when a previous call wrote the same set)
    and their datalist items ``{"image", "report", "split", "row"}``; 70 % JPG, 20 % PNG, 10 % DICOM."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    manifest = os.path.join(folder, "manifest.json")
    spec = {"n": int(n), "seed": int(seed), "sides": list(sides), "version": 1}
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("spec") == spec:
            return saved["items"]

    def make(index: int) -> dict:
        rng = np.random.default_rng([seed, index])
        rows, cols = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        array = _radiograph(rng, rows, cols)
        kind = "dcm" if index % 10 == 9 else "png" if index % 10 in (7, 8) else "jpg"
        path = os.path.join(folder, f"cxr_{index:05d}.{kind}")
        if kind == "dcm":
            _write_dicom(path, array)
        elif kind == "png":
            Image.fromarray(array).save(path, compress_level=1)  # fast to write; decoding is what is measured
        else:
            Image.fromarray(array).save(path, quality=90)
        finding, place = _FINDINGS[index % len(_FINDINGS)], _PLACES[(index // 7) % len(_PLACES)]
        report = f"There is {finding} in the {place}. No {_FINDINGS[(index + 3) % len(_FINDINGS)]}. Heart size normal."
        return {"image": path, "report": report, "split": "training", "row": index}

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL encodes without the GIL
        items = list(pool.map(make, range(int(n))))
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump({"spec": spec, "items": items}, f)
    return items


def _tokenizer(items: list[dict], folder: str):
    from custom.text import prepare_tokenizer

    return prepare_tokenizer("", [it["report"] for it in items], folder)


# ---- throughput -----------------------------------------------------------------------------


def _epoch(dataset, workers: int) -> tuple[int, float]:
    """Pairs and seconds of one shuffled epoch through the training loader (collate included)."""
    from custom.data import make_loader

    start = time.perf_counter()
    loader = make_loader(dataset, BATCH, shuffle=True, num_workers=workers, seed=0, drop_last=True)
    pairs = 0
    for batch in loader:
        pairs += int(batch["image"].shape[0])
    return pairs, time.perf_counter() - start


def measure_pipeline(n: int, image_size: int, workers: Sequence[int], tmp: str) -> dict:
    """Pairs/s of the pretraining data pipeline on ``n`` generated full-size radiographs.

    Args:
        n: number of files (>= 32). image_size: training size in px. workers: DataLoader worker
            counts to measure. tmp: scratch folder (the generated files are kept there and reused
            by a later call with the same ``n``; the caches are rebuilt per call).

    Returns:
        ``{"pairs_per_s": {workers: {"cold": float, "warm": float}}, "rows": [per-case dicts with
        workers, cache, pairs, build_s, epoch_s, pairs_per_s, epoch_pairs_per_s], "cache": {"files",
        "bytes"} of one cache, "n", "image_size", "generate_s"}``.
    """
    from custom.data import PretrainDataset
    from custom.image_cache import cache_size

    start = time.perf_counter()
    items = generate_radiographs(int(n), os.path.join(tmp, f"images_{int(n)}"))
    generate_s = time.perf_counter() - start
    tokenizer = _tokenizer(items, os.path.join(tmp, "text"))
    rows, table, size = [], {}, {}
    for w in workers:
        cache_dir = os.path.join(tmp, f"cache_{int(image_size)}px_w{int(w)}")
        shutil.rmtree(cache_dir, ignore_errors=True)
        for phase in ("cold", "warm"):
            gc.collect()
            t0 = time.perf_counter()
            dataset = PretrainDataset(items, tokenizer, image_size=int(image_size), augment=True, seed=0,
                                      cache_dir=cache_dir)
            build_s = time.perf_counter() - t0
            pairs, epoch_s = _epoch(dataset, int(w))
            row = {"workers": int(w), "cache": phase, "pairs": pairs, "build_s": round(build_s, 3),
                   "epoch_s": round(epoch_s, 3), "pairs_per_s": round(pairs / (build_s + epoch_s), 2),
                   "epoch_pairs_per_s": round(pairs / epoch_s, 2)}
            rows.append(row)
            table.setdefault(int(w), {})[phase] = row["pairs_per_s"]
            print(f"  workers={w} {phase}: build {build_s:.1f} s, epoch {epoch_s:.1f} s, "
                  f"{row['pairs_per_s']} pairs/s", flush=True)
            del dataset
        size = cache_size(cache_dir)
    return {"pairs_per_s": table, "rows": rows, "cache": {"files": size.get("files"), "bytes": size.get("bytes")},
            "n": int(n), "image_size": int(image_size), "generate_s": round(generate_s, 1)}


# ---- memory -----------------------------------------------------------------------------------


def _vm_rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _rss_case(count: int, image_size: int, cache_dir: str, sources: str) -> dict:
    """In this (fresh) process: VmRSS growth of a PretrainDataset of ``count`` items over the
    datalist itself; ``cache_dir`` "" = in memory. Sources: a folder of a few small PNGs."""
    from custom.data import PretrainDataset

    with open(os.path.join(sources, "items.json"), encoding="utf-8") as f:
        base = json.load(f)
    items = [dict(base[n % len(base)], row=n) for n in range(count)]
    tokenizer = _tokenizer(base, os.path.join(sources, "text"))
    gc.collect()
    before = _vm_rss_kb()
    t0 = time.perf_counter()
    dataset = PretrainDataset(items, tokenizer, image_size=image_size, augment=False, cache_dir=cache_dir or None)
    seconds = time.perf_counter() - t0
    sample = dataset[count - 1]["image"]  # the records are readable
    gc.collect()
    grown = _vm_rss_kb() - before
    return {"items": count, "mode": "cache" if cache_dir else "memory", "image_size": image_size,
            "rss_growth_mb": round(grown / 1024, 1), "bytes_per_item": round(grown * 1024 / count),
            "build_s": round(seconds, 1), "shape": list(sample.shape)}


def measure_rss(counts: Sequence[int], image_size: int, tmp: str, modes: Sequence[str] = ("cache", "memory")) -> list[dict]:
    """:func:`_rss_case` for each count and mode, each in its own subprocess (a clean RSS)."""
    from PIL import Image

    sources = os.path.join(tmp, "rss_sources")
    os.makedirs(sources, exist_ok=True)
    base = []
    for n in range(8):
        path = os.path.join(sources, f"src{n}.png")
        Image.fromarray(_radiograph(np.random.default_rng(n), 300, 260)).save(path)
        base.append({"image": path, "report": f"There is {_FINDINGS[n % 7]} in the {_PLACES[n % 6]}.",
                     "split": "training"})
    with open(os.path.join(sources, "items.json"), "w", encoding="utf-8") as f:
        json.dump(base, f)
    cache_dir = os.path.join(tmp, "rss_cache")
    results = []
    for mode in modes:
        for count in counts:
            code = (f"import json; from benchmarks.pipeline import _rss_case; "
                    f"print(json.dumps(_rss_case({int(count)}, {int(image_size)}, "
                    f"{cache_dir if mode == 'cache' else ''!r}, {sources!r})))")
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                  env=dict(os.environ, PYTHONPATH=REPO), check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  rss {mode} {count} items: +{results[-1]['rss_growth_mb']} MB", flush=True)
    return results


# ---- report -----------------------------------------------------------------------------------


def format_markdown(result: dict) -> str:
    lines = [f"# Data pipeline: {result['n']} generated full-size radiographs at {result['image_size']} px",
             "", f"{result['machine']}. Batch {BATCH}, augmentation on, one epoch. pairs/s = epoch pairs / "
             "(dataset construction + epoch); cold = the dataset's up-front pass decodes into an empty cache.",
             "", "| workers | cache | build s | epoch s | pairs/s | epoch-only pairs/s |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['workers']} | {r['cache']} | {r['build_s']} | {r['epoch_s']} | {r['pairs_per_s']} | "
                     f"{r['epoch_pairs_per_s']} |")
    cache = result["cache"]
    lines += ["", f"Cache: {cache['files']} files, {cache['bytes'] / 2**20:.1f} MB "
              f"({cache['bytes'] / max(1, cache['files']) / 1024:.1f} kB per record)."]
    if result.get("rss"):
        lines += ["", "## Memory of a dataset (VmRSS growth over the loaded datalist)", "",
                  "Items repeat 8 small source images (cheap to build): the cache holds 8 records; "
                  "in memory every item is decoded.", "",
                  "| mode | items | image px | RSS growth MB | bytes/item | build s |", "|---|---|---|---|---|---|"]
        for r in result["rss"]:
            lines.append(f"| {r['mode']} | {r['items']} | {r['image_size']} | {r['rss_growth_mb']} | "
                         f"{r['bytes_per_item']} | {r['build_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="generated files (default 2000)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma-separated")
    parser.add_argument("--out", default=RESULTS, help="folder for pipeline.json / pipeline.md")
    parser.add_argument("--tmp", default="", help="scratch folder (default: a new temp dir, removed after)")
    parser.add_argument("--rss_items", default="1000,20000", help="dataset sizes for the memory check")
    parser.add_argument("--rss_image_size", type=int, default=128)
    parser.add_argument("--skip_rss", action="store_true")
    args = parser.parse_args(argv)
    if args.n < BATCH:
        parser.error(f"--n must be at least one batch ({BATCH})")
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    tmp = args.tmp or tempfile.mkdtemp(prefix="reclf_pipeline_")
    try:
        print(f"pipeline: {args.n} files, {args.image_size} px, workers {workers} (scratch {tmp})", flush=True)
        result = measure_pipeline(args.n, args.image_size, workers, tmp)
        result["machine"] = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores available"
        if not args.skip_rss:
            counts = [int(c) for c in args.rss_items.split(",") if c.strip()]
            result["rss"] = measure_rss(counts, args.rss_image_size, tmp)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pipeline.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    markdown = format_markdown(result)
    with open(os.path.join(args.out, "pipeline.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
