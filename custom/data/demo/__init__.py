"""Seeded synthetic chest-radiograph demo data: images, lesion masks, free-text reports, labels.

Every bundle runs out of the box on this data (DESIGN §6), so it has to be *learnable in the way
RECLF cares about*: each finding is drawn at a side, a zone and a severity, and the report names
it with its location in varied wording. About a third of the studies carry two findings on
opposite sides (e.g. a left effusion and a right opacity): the bag of words "left, right,
effusion, opacity" then fits two different images, so only a model that binds a disease word to
its location word can tell them apart.

Conventions
-----------
* Radiological orientation: the patient's LEFT is on the IMAGE'S RIGHT. Arrays are ``(H, W)`` with
  ``array[row, col]``, row top→bottom and col left→right as displayed, written with
  ``PIL.Image.fromarray``; a lesion of the patient's left lung therefore has mask columns
  ``> W / 2``.
* Geometry is built in "body units": image coordinates centred on the image (``[-0.5, 0.5]``),
  shifted and scaled per study, so every shape is a closed-form function of two broadcast
  coordinate vectors (``X`` of shape ``(1, S)``, ``Y`` of shape ``(S, 1)``), in float32, with
  everything inside a lung computed on the lung's bounding box. No per-pixel loops: the default
  1680 studies at 128 px take ~12 s on one core, a quarter of it PNG encoding.
* Randomness: one ``numpy.random.Generator`` per (seed, purpose, index), so a study's image and
  report do not depend on how many studies come before it, and the same seed gives byte-identical
  PNGs and datalist.

Modules: :mod:`.reports` (finding vocabulary, study mix, phrase tables, report writer),
:mod:`.phantom` (the images and lesion masks) and this one (splits, files, the ``demo`` command).
Only numpy and Pillow are imported here, so ``import custom.demo`` stays fast (no torch/monai).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np
from PIL import Image

from .phantom import Anatomy, render_study
from .reports import (
    FINDING_TEMPLATES, FINDINGS, FRACTION_NORMAL, FRACTION_OPPOSITE_PAIR, LATERAL_FINDINGS, P_SECOND_STUDY, SEVERITIES,
    SIDES, ZONES, ZONES_BY_FINDING, _RNG_ANATOMY, _RNG_FINDINGS, _RNG_RENDER, _RNG_REPORT, _labels, _rng,
    describe_finding, make_report, sample_findings,
)

__all__ = [
    "FINDINGS",
    "LATERAL_FINDINGS",
    "SIDES",
    "ZONES",
    "SEVERITIES",
    "ZONES_BY_FINDING",
    "FINDING_TEMPLATES",
    "Anatomy",
    "sample_findings",
    "describe_finding",
    "make_report",
    "render_study",
    "generate_demo",
    "ensure_demo",
    "ensure_default_demo",
    "main_demo",
]


# Noisy radiographs barely compress: a fast zlib level writes ~25% quicker for ~8% more bytes.
PNG_COMPRESS_LEVEL = 2


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _plan_split(rng: np.random.Generator, n: int) -> tuple[list[int], list[str]]:
    """Studies per patient (1 or 2, summing to ``n``) and the shuffled kind of each study.

    Kinds follow exact quotas per split (not coin flips), so even a 20-study split has its
    share of opposite-side pairs.
    """
    studies: list[int] = []
    remaining = n
    while remaining > 0:
        k = 2 if remaining >= 2 and rng.random() < P_SECOND_STUDY else 1
        studies.append(k)
        remaining -= k
    n_pair = math.ceil(FRACTION_OPPOSITE_PAIR * n)
    n_normal = min(round(FRACTION_NORMAL * n), n - n_pair)
    kinds = ["pair"] * n_pair + ["normal"] * n_normal + ["single"] * (n - n_pair - n_normal)
    return studies, [kinds[i] for i in rng.permutation(n)]


def _save_png(array: np.ndarray, path: str) -> None:
    """Write a PNG atomically, so a concurrent reader never sees a half-written file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Image.fromarray(array).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(tmp, path)


def _write_json_atomic(obj: Any, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def generate_demo(
    out_dir: str,
    n_train: int = 1200,
    n_val: int = 240,
    n_test: int = 240,
    image_size: int = 128,
    seed: int = 0,
) -> str:
    """Generate the demo dataset into ``out_dir`` and return the path of its ``datalist.json``.

    Writes ``images/<study>.png`` (8-bit grayscale), ``masks/<study>.png`` (0/255, possibly
    empty) and, last and atomically, ``datalist.json`` (MONAI format, paths relative to
    ``out_dir``): its presence means the data is complete. Splits are by patient.
    """
    n_train, n_val, n_test, image_size, seed = int(n_train), int(n_val), int(n_test), int(image_size), int(seed)
    if min(n_train, n_val, n_test) < 0 or image_size < 16:
        raise ValueError("split sizes must be >= 0 and image_size >= 16")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)

    plan_rng = np.random.default_rng([seed, 0])
    splits = {"training": n_train, "validation": n_val, "test": n_test}
    plans = {key: _plan_split(plan_rng, n) for key, n in splits.items()}
    n_patients = sum(len(studies) for studies, _ in plans.values())
    # Patient numbers are shuffled so that ids do not reveal the split.
    patient_numbers = plan_rng.permutation(n_patients)

    datalist: dict[str, Any] = {key: [] for key in splits}
    patient, study = 0, 0
    for key, (studies, kinds) in plans.items():
        for k in studies:
            pid = f"demo-{int(patient_numbers[patient]):05d}"
            anatomy = Anatomy.sample(_rng(seed, _RNG_ANATOMY, patient))
            for visit in range(k):
                kind = kinds[len(datalist[key])]
                findings = sample_findings(_rng(seed, _RNG_FINDINGS, study), kind)
                image, mask = render_study(findings, anatomy, _rng(seed, _RNG_RENDER, study), image_size)
                name = f"{pid}-s{visit + 1}.png"
                _save_png(image, os.path.join(out_dir, "images", name))
                _save_png(mask, os.path.join(out_dir, "masks", name))
                datalist[key].append(
                    {
                        "image": f"images/{name}",
                        "mask": f"masks/{name}",
                        "report": make_report(findings, _rng(seed, _RNG_REPORT, study)),
                        "labels": _labels(findings),
                        "patient_id": pid,
                        "view": "PA",
                        "findings": findings,
                    }
                )
                study += 1
            patient += 1

    datalist["label_names"] = list(FINDINGS)
    datalist["description"] = (
        "reclf synthetic chest-radiograph demo: images, lesion masks, reports and labels; "
        "patient's left on the image's right; splits by patient"
    )
    datalist["demo"] = {"seed": seed, "image_size": image_size, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    path = os.path.join(out_dir, "datalist.json")
    _write_json_atomic(datalist, path)
    return path


def ensure_demo(dataset_dir: str, datalist: str | None = None, **kwargs: Any) -> str:
    """Return ``datalist`` (default ``dataset_dir/datalist.json``) if it exists, else make the demo.

    The demo is generated into ``dataset_dir`` (``kwargs`` go to :func:`generate_demo`). When an
    explicit ``datalist`` path other than ``dataset_dir/datalist.json`` is missing, the generated
    datalist is also written there (its paths stay relative to ``dataset_dir``, DESIGN §4). To
    protect real data, a ``dataset_dir`` holding anything besides a previous (interrupted)
    demo's ``images/``/``masks/`` and dotfiles is refused with ``FileExistsError``.
    """
    default = os.path.join(dataset_dir, "datalist.json")
    target = datalist if datalist not in (None, "", "none", "None") else default
    if os.path.exists(target):
        return target
    if os.path.isdir(dataset_dir):
        ours = ("images", "masks", "datalist.json")
        foreign = [n for n in os.listdir(dataset_dir) if n not in ours and not n.endswith(".tmp") and not n.startswith(".")]
        if foreign:
            raise FileExistsError(
                f"no datalist at {target}, and {dataset_dir} is not empty ({sorted(foreign)[:5]}); "
                "refusing to generate demo data there: pass the right datalist or an empty dataset_dir"
            )
    if not os.path.exists(default):
        sizes = {k: kwargs.get(k, v) for k, v in (("n_train", 1200), ("n_val", 240), ("n_test", 240))}
        print(f"reclf demo: no datalist at {target}; generating {sum(map(int, sizes.values()))} demo studies into {dataset_dir}", flush=True)
        generate_demo(dataset_dir, **kwargs)
    if os.path.abspath(target) != os.path.abspath(default):
        with open(default, encoding="ascii") as fh:
            _write_json_atomic(json.load(fh), target)
    return target


def ensure_default_demo(datalist: str, demo_dir: str = "data/demo", main_process_only: bool = False) -> str | None:
    """Generate the demo into ``demo_dir`` only when ``datalist`` is the demo's own datalist.

    The bundle configs call this in ``initialize``: a user's own (even misspelt) datalist never
    triggers generation; it fails later with a clear "datalist not found" instead.
    ``main_process_only`` (the torchrun overlays): only process 0 writes; the others wait at the
    barrier the overlay places after this call.
    """
    from ...distributed import rank

    if os.path.abspath(datalist) != os.path.abspath(os.path.join(demo_dir, "datalist.json")):
        return None
    if main_process_only and rank() != 0:
        return None
    return ensure_demo(demo_dir)


def _as_bool(value: Any) -> bool:
    """Strict bool for command-line values (fire hands ``--force false`` over as a string)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def main_demo(
    out: str = "data/demo",
    n_train: int = 1200,
    n_val: int = 240,
    n_test: int = 240,
    image_size: int = 128,
    seed: int = 0,
    force: bool = False,
) -> str:
    """Command-line entry (``python -m custom demo``): generate the demo data, return its datalist.

    An existing datalist is kept unless ``force`` is true.
    """
    path = os.path.join(out, "datalist.json")
    if os.path.exists(path) and not _as_bool(force):
        print(f"reclf demo: {path} exists (pass --force true to regenerate)")
        return path
    start = time.perf_counter()
    path = generate_demo(out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size, seed=seed)
    n = int(n_train) + int(n_val) + int(n_test)
    print(f"reclf demo: wrote {n} studies to {out} in {time.perf_counter() - start:.1f} s")
    return path
