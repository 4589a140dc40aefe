"""The generated demo set (DESIGN §6) through the same ``prepare`` path as the real datasets."""

from __future__ import annotations

import json
import os
from typing import Any

from .common import SPLITS, PrepareLog, Record, common_options, finalize


def prepare_demo(
    root: str = "data/demo",
    out: str | None = None,
    seed: int = 0,
    n_train: int = 1200,
    n_val: int = 240,
    n_test: int = 240,
    image_size: int = 128,
    quiet: bool = False,
) -> dict[str, Any]:
    """Generate the synthetic demo set into ``root`` (if its ``datalist.json`` is not there yet)
    and write the datalist to ``out`` (default ``root/datalist.json``), with the usual summary.

    Expected layout (written by the generator)::

        ROOT/
          images/demo-PPPPP-sK.png   radiograph-like images (patient's left on the image's right)
          masks/demo-PPPPP-sK.png    lesion masks, 0/255
          datalist.json              splits by patient, reports, labels (label_names), findings

    The generator's own split (by patient) is kept as the official split.
    """
    from ..demo import ensure_demo

    root = os.path.abspath(str(root))
    source = ensure_demo(root, None, n_train=n_train, n_val=n_val, n_test=n_test, image_size=image_size, seed=seed)
    with open(source, encoding="utf-8") as f:
        generated = json.load(f)
    records = [
        Record(
            image=item["image"], patient_id=item["patient_id"], source=f"{os.path.basename(source)}:{split}[{row}]",
            report=item["report"], labels=item["labels"], mask=item["mask"], view=item["view"], split=split,
            extra={"findings": item["findings"]},
        )
        for split in SPLITS
        for row, item in enumerate(generated[split])
    ]
    return finalize(
        "demo", records, root=root, out=out or source, log=PrepareLog("demo"), seed=seed, val_frac=0.0, test_frac=0.0,
        open_splits=(), label_names=generated["label_names"], dedup=False, quiet=quiet,
        options=common_options(seed, 0.0, 0.0, "error", n_train=n_train, n_val=n_val, n_test=n_test,
                               image_size=image_size),
        meta={k: generated[k] for k in ("description", "demo") if k in generated},
    )
