"""The decode-once uint8 image cache (custom/image_cache.py) and its use by the datasets."""

from __future__ import annotations

import glob
import logging
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from custom.data import (
    CachedRecords, DatalistError, LoadRadiographd, MemoryRecords, PretrainDataset, ResizeLongestd, decode_images,
    image_transform, resolve_workers,
)
from custom.image_cache import ImageCache, _read_npz, _write_atomic, cache_size, describe_transform, main_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTES = os.path.join(os.path.dirname(REPO), "shared", "data", "cxr-notes")


def _png(path, seed: int, shape=(90, 70)) -> str:
    """A smooth 8-bit gray image (a gradient plus a seeded blob), so resizes are not trivial."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    cy, cx = rng.uniform(0.2, 0.8, 2) * np.array(shape)
    blob = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * (shape[0] / 6) ** 2))
    array = (0.4 * rows / shape[0] + 0.6 * blob) * 255
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return str(path)


def _items(tmp_path, n: int = 4) -> list[dict]:
    return [{"image": _png(tmp_path / f"img{i}.png", i), "split": "training", "row": i, "report": f"report {i}"}
            for i in range(n)]


class _DecodeCounter:
    """Counts real decodes by wrapping ImageCache.decode (the original still runs)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        original = ImageCache.decode

        def counted(cache, sources):
            self.calls += 1
            return original(cache, sources)

        monkeypatch.setattr(ImageCache, "decode", counted)


def test_a_cache_built_at_64_px_misses_at_128_px(tmp_path):
    items = _items(tmp_path, 3)
    cache = str(tmp_path / "cache")
    small, _ = decode_images(items, image_transform(64), cache_dir=cache)
    assert isinstance(small, CachedRecords) and small[0]["image"].shape == (1, 64, 64)
    assert cache_size(cache)["files"] == 3
    large, _ = decode_images(items, image_transform(128), cache_dir=cache)
    assert large[0]["image"].shape == (1, 128, 128)  # not the 64 px record
    assert cache_size(cache)["files"] == 6  # both sizes side by side
    reference = np.asarray(image_transform(128)({"image": items[0]["image"]})["image"])
    assert np.abs(large[0]["image"] - reference).max() <= 0.5 / 255 + 1e-6


def test_every_preprocessing_setting_enters_the_key(tmp_path):
    from monai.transforms import Compose, SpatialPadd

    path = _png(tmp_path / "a.png", 0)

    def chain(size=64, mode="area", pad=64, pad_mode="constant"):
        return Compose([LoadRadiographd(("image",)), ResizeLongestd(("image",), size, mode=mode),
                        SpatialPadd(("image",), spatial_size=(pad, pad), mode=pad_mode)])

    variants = [chain(), chain(size=60), chain(mode="bilinear"), chain(pad=72), chain(pad_mode="edge")]
    keys = {ImageCache(str(tmp_path / "c"), t).key({"image": path}) for t in variants}
    assert len(keys) == len(variants)
    # the same settings built twice give the same key (the key is not an object id)
    assert ImageCache("x", chain()).key({"image": path}) == ImageCache("y", chain()).key({"image": path})
    assert ImageCache("x", image_transform(64)).settings == ImageCache("x", image_transform(64)).settings
    with pytest.raises(ValueError, match="random"):
        from custom.data import augment_transform

        describe_transform(augment_transform())


def test_a_touched_or_changed_source_misses(tmp_path, monkeypatch):
    items = _items(tmp_path, 2)
    cache_dir = str(tmp_path / "cache")
    cache = ImageCache(cache_dir, image_transform(32))
    first = cache.key({"image": items[0]["image"]})
    decode_images(items, image_transform(32), cache_dir=cache_dir)
    counter = _DecodeCounter(monkeypatch)
    decode_images(items, image_transform(32), cache_dir=cache_dir)
    assert counter.calls == 0  # warm: nothing decoded
    stat = os.stat(items[0]["image"])
    os.utime(items[0]["image"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touch
    touched = cache.key({"image": items[0]["image"]})
    assert touched != first
    decode_images(items, image_transform(32), cache_dir=cache_dir)
    assert counter.calls == 1
    # new content (another image, another size), whatever its mtime: misses and reads the new pixels
    _png(items[0]["image"], 99, shape=(50, 80))
    os.utime(items[0]["image"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    records, _ = decode_images(items, image_transform(32), cache_dir=cache_dir)
    assert counter.calls == 2 and cache.key({"image": items[0]["image"]}) not in (first, touched)
    reference = np.asarray(image_transform(32)({"image": items[0]["image"]})["image"])
    assert np.abs(records[0]["image"] - reference).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage"])
def test_a_damaged_cache_file_is_decoded_again_and_rewritten(tmp_path, caplog, damage):
    items = _items(tmp_path, 2)
    cache_dir = str(tmp_path / "cache")
    records, _ = decode_images(items, image_transform(48), cache_dir=cache_dir)
    good = records[1]["image"].copy()
    path = records.cache.path(records.keys[1].tobytes().hex())
    data = open(path, "rb").read()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_byte":  # inside the pixel data: only the zip CRC can tell
        data = bytearray(data)
        data[len(data) // 2] ^= 0xFF
        data = bytes(data)
    else:
        data = b"not a zip at all"
    with open(path, "wb") as f:
        f.write(data)
    with caplog.at_level(logging.WARNING, logger="reclf"):
        again = records[1]["image"]
    assert "unreadable record" in caplog.text and os.path.basename(path) in caplog.text
    assert np.array_equal(again, good)
    assert np.array_equal(_read_npz(path)["image"], np.rint(good * 255).astype(np.uint8))  # rewritten, valid


def _hammer(path: str, stored: dict, rounds: int, queue) -> None:
    """Write the same record ``rounds`` times and read it back between writes."""
    bad = 0
    for _ in range(rounds):
        _write_atomic(path, stored)
        try:
            arrays = _read_npz(path)
            bad += int(not np.array_equal(arrays["image"], stored["image"]))
        except Exception:  # noqa: BLE001 - any read failure is what the test counts
            bad += 1
    queue.put(bad)


def test_concurrent_writers_leave_one_valid_file(tmp_path):
    source = _png(tmp_path / "a.png", 3, shape=(300, 260))
    cache = ImageCache(str(tmp_path / "cache"), image_transform(128))
    stored = cache.decode({"image": source})
    path = cache.path(cache.key({"image": source}))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_hammer, args=(path, stored, 40, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert [queue.get(timeout=5) for _ in workers] == [0, 0]  # no reader ever saw a partial file
    assert cache_size(cache.cache_dir) == {"files": 1, "bytes": os.path.getsize(path), "temp_files": 0}
    assert np.array_equal(cache.read({"image": source})["image"], stored["image"].astype(np.float32) / 255)


@pytest.mark.skipif(not os.path.isdir(NOTES), reason="needs ../shared/data/cxr-notes")
def test_records_match_the_transform_within_one_level_and_masks_exactly(tmp_path):
    from custom.segmentation import pair_transform

    masks = sorted(glob.glob(os.path.join(NOTES, "masks", "*.png")))[:3]
    pairs = [{"image": os.path.join(NOTES, "images", os.path.basename(m)), "label": m, "split": "training", "row": n}
             for n, m in enumerate(masks)]
    pairs = [p for p in pairs if os.path.isfile(p["image"])]
    assert pairs
    for cache_dir in (None, str(tmp_path / "cache")):
        images, _ = decode_images(pairs, image_transform(96), cache_dir=cache_dir)
        both, _ = decode_images(pairs, pair_transform(96), cache_dir=cache_dir, keys=("image", "label"))
        assert isinstance(images, MemoryRecords if cache_dir is None else CachedRecords)
        for n, pair in enumerate(pairs):
            ref = np.asarray(image_transform(96)({"image": pair["image"]})["image"])
            assert images[n]["image"].dtype == np.float32 and images[n]["image"].shape == ref.shape
            assert np.abs(images[n]["image"] - ref).max() <= 0.5 / 255 + 1e-6
            ref_pair = pair_transform(96)({"image": pair["image"], "label": pair["label"]})
            assert both[n]["label"].dtype == np.uint8
            assert np.array_equal(both[n]["label"], np.asarray(ref_pair["label"]))
            assert set(np.unique(both[n]["label"]).tolist()) <= {0, 1} and both[n]["label"].any()
    assert cache_size(str(tmp_path / "cache"))["files"] == 2 * len(pairs)  # image-only and pair records differ


def test_the_cache_command_writes_what_training_reads(tmp_path, monkeypatch):
    import json

    items = _items(tmp_path, 5)
    datalist = tmp_path / "datalist.json"
    rows = [{"image": os.path.basename(it["image"]), "report": it["report"]} for it in items]
    datalist.write_text(json.dumps({"training": rows[:3], "validation": rows[3:], "test": []}))
    cache_dir = str(tmp_path / "cache")
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, "-m", "custom", "cache", "--datalist", str(datalist), "--dataset_dir", str(tmp_path),
         "--image_size", "64", "--cache_dir", cache_dir, "--split", "all", "--workers", "2"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "cached 5 record(s) at 64 px" in done.stdout and "5 file(s)" in done.stdout
    written = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(cache_dir, "*", "*.npz"))}
    assert len(written) == 5

    from custom.data import load_datalist
    from custom.text import prepare_tokenizer

    train = load_datalist(str(datalist), str(tmp_path), "training", require=("image", "report"))
    tokenizer = prepare_tokenizer("", [it["report"] for it in train] * 4, str(tmp_path / "text"))
    counter = _DecodeCounter(monkeypatch)
    dataset = PretrainDataset(train, tokenizer, image_size=64, augment=True, cache_dir=cache_dir)
    batch = dataset.collate([dataset[n] for n in range(len(dataset))])
    assert counter.calls == 0  # every key the run looked up was written by the command
    assert batch["image"].shape == (3, 1, 64, 64) and batch["image"].dtype.is_floating_point
    assert {p: os.stat(p).st_mtime_ns for p in written} == written  # nothing rewritten
    # the in-process entry point reports the same folder, now fully warm
    again = main_cache(str(datalist), cache_dir, 64, str(tmp_path))
    assert again["decoded"] == 0 and again["files"] == 5 and counter.calls == 0


def test_a_key_ending_in_a_zero_byte_reads_its_own_record(tmp_path, monkeypatch):
    # found by benchmarks/pipeline.py: numpy "S32" keys lost trailing NUL bytes, so 1 in 256
    # records was looked up under a shorter key, missed, and was decoded again every time
    source = _png(tmp_path / "a.png", 5)
    cache = ImageCache(str(tmp_path / "cache"), image_transform(32))
    key = "ab" * 31 + "00"
    cache.ensure({"image": source}, key)
    records = CachedRecords(cache, {"image": [source]}, np.frombuffer(bytes.fromhex(key), np.uint8)[None])
    counter = _DecodeCounter(monkeypatch)
    assert records[0]["image"].shape == (1, 32, 32) and counter.calls == 0
    assert cache_size(cache.cache_dir)["files"] == 1


def test_size_report_counts_records_and_leftover_temp_files(tmp_path):
    items = _items(tmp_path, 3)
    cache_dir = str(tmp_path / "cache")
    records, _ = decode_images(items, image_transform(40), cache_dir=cache_dir)
    files = glob.glob(os.path.join(cache_dir, "*", "*.npz"))
    leftover = os.path.join(os.path.dirname(files[0]), "x.npz.abc.tmp")  # an interrupted write
    open(leftover, "wb").write(b"partial")
    size = records.cache.size()
    assert size == {"files": 3, "bytes": sum(os.path.getsize(f) for f in files), "temp_files": 1}
    # a 40 px uint8 record is ~1.6 kB of pixels: no float32 and no compression overhead blow-up
    assert 40 * 40 < size["bytes"] / 3 < 4 * 40 * 40


def test_the_bad_image_policy_holds_with_a_cache(tmp_path):
    items = _items(tmp_path, 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    items.insert(1, {"image": str(broken), "split": "validation", "row": 9})
    cache_dir = str(tmp_path / "cache")
    with pytest.raises(DatalistError, match=r"1 image\(s\) cannot be read, first at validation\[9\]: .*broken\.png"):
        decode_images(items, image_transform(32), cache_dir=cache_dir)
    records, kept = decode_images(items, image_transform(32), cache_dir=cache_dir, bad_images="skip")
    assert [it["row"] for it in kept] == [0, 1, 2] and len(records) == 3
    for n, it in enumerate(kept):  # keys stay aligned with the kept items
        ref = np.asarray(image_transform(32)({"image": it["image"]})["image"])
        assert np.abs(records[n]["image"] - ref).max() <= 0.5 / 255 + 1e-6


def test_num_workers_auto_leaves_a_core_to_training(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert resolve_workers("auto") == 4 and resolve_workers("auto", processes=8) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_workers("auto") == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert resolve_workers("auto") == 0 and resolve_workers(3) == 3
    with pytest.raises(ValueError, match="num_workers"):
        resolve_workers("many")
