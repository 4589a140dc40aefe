"""``python -m custom export-bundle``: self-contained model-zoo bundles (custom/tools/export/).

One tiny checkpoint per bundle is exported; ONE clean subprocess (no PYTHONPATH, another working
directory) then runs every exported bundle's inference.yaml and evaluate.yaml (and reclf_cls's
zero_shot.yaml on the packaged pretraining checkpoint), MONAI's verify_net_in_out and ckpt_export,
and reports what it saw; the tests compare that with the repository's own code.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

from conftest import REPO, TINY, exception_text, monai_label_pieces, run_bundle

from custom.export import (
    BUNDLES, SCHEMA_URL, ZOO_META_SCHEMA, ZOO_REQUIRED, _sha256, export_bundle, rewrite_expression,
    zoo_metadata_problems,
)

PYTHON = sys.executable

# Runs in the clean subprocess: argv[1] = JSON {"bundles": {name: {"root", "overrides", "extra"}}, "report": path}.
SCRIPT = r"""
import json, os, sys, time, traceback
start = time.perf_counter()
from monai.bundle import ckpt_export, run, verify_net_in_out
job = json.loads(sys.argv[1])
report = {"_import_s": time.perf_counter() - start}
for name, spec in job["bundles"].items():
    root, done = spec["root"], []
    try:
        for config in spec["configs"]:
            run(config_file=os.path.join(root, "configs", config), **spec["overrides"])
            done.append((config, time.perf_counter() - start))
        verify_net_in_out(net_id="network_def", meta_file=os.path.join(root, "configs", "metadata.json"),
                          config_file=os.path.join(root, "configs", "inference.yaml"), device="cpu")
        done.append(("verify_net_in_out", time.perf_counter() - start))
        ckpt_export(net_id="network_def", config_file=os.path.join(root, "configs", "inference.yaml"),
                    bundle_root=root, use_trace=spec["use_trace"])
        done.append(("ckpt_export", time.perf_counter() - start))
        report[name] = {"done": [d[0] for d in done], "seconds": [round(d[1], 1) for d in done], "error": None}
    except Exception:
        report[name] = {"done": [d[0] for d in done], "error": traceback.format_exc()}
import custom
for name in job["bundles"]:
    report[name]["custom_file"] = custom.__file__
json.dump(report, open(job["report"], "w"))
"""


def _classifier_and_segmenter(pretrain_ckpt: str, out) -> dict[str, str]:
    """reclf_cls / reclf_seg checkpoints without training (the export does not care how good they
    are): the pretrained encoder, untrained heads, and the model.json each bundle's train.yaml writes."""
    from custom.demo import FINDINGS
    from custom.engines.checkpoints import build_classifier, build_segmenter
    from custom.segmentation import save_segmenter

    torch.manual_seed(0)
    cls_dir, seg_dir = out / "cls", out / "seg"
    cls_dir.mkdir()
    seg_dir.mkdir()
    classifier = build_classifier(len(FINDINGS), pretrained_ckpt=pretrain_ckpt)
    torch.save(classifier.state_dict(), str(cls_dir / "model.pt"))
    (cls_dir / "model.json").write_text(json.dumps({
        "task": "linear_probe", "class_names": list(FINDINGS), "num_classes": len(FINDINGS), "multi_label": True,
        "image_encoder": classifier.encoder_name, "image_size": 64}))
    save_segmenter(build_segmenter(pretrained_ckpt=pretrain_ckpt), str(seg_dir / "model.pt"), {"image_size": 64})
    return {"reclf_cls": str(cls_dir / "model.pt"), "reclf_seg": str(seg_dir / "model.pt")}


@pytest.fixture(scope="module")
def exports(pretrained, tiny_datalist, tmp_path_factory):
    """The three bundles exported (tiny checkpoints) and run from elsewhere in one clean subprocess."""
    tmp = tmp_path_factory.mktemp("export")
    data = {"dataset_dir": os.path.dirname(tiny_datalist), "datalist": tiny_datalist}
    pretrain_ckpt = os.path.join(pretrained, "models", "model.pt")
    weights = _classifier_and_segmenter(pretrain_ckpt, tmp)
    zoo = str(tmp / "zoo")
    roots = {
        "reclf_pretrain": export_bundle("reclf_pretrain", zoo, weights=pretrain_ckpt),
        "reclf_cls": export_bundle("reclf_cls", zoo, weights=weights["reclf_cls"], pretrained=pretrain_ckpt, zip=False),
        "reclf_seg": export_bundle("reclf_seg", zoo, weights=weights["reclf_seg"], pretrained="none", zip=False),
    }
    overrides = {**data, "device": "cpu"}
    job = {"report": str(tmp / "report.json"), "bundles": {
        "reclf_pretrain": {"root": roots["reclf_pretrain"], "overrides": overrides,
                           "configs": ["inference.yaml", "evaluate.yaml"], "use_trace": False},
        "reclf_cls": {"root": roots["reclf_cls"], "overrides": overrides,
                      "configs": ["inference.yaml", "zero_shot.yaml"], "use_trace": False},
        # SegUNet.forward does not compile with torch.jit.script (a module-level constant in it): trace
        "reclf_seg": {"root": roots["reclf_seg"], "overrides": overrides, "configs": ["inference.yaml"],
                      "use_trace": True},
    }}
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MONAI_FAIL_ON_DUPLICATE_CONFIG="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([PYTHON, "-c", SCRIPT, json.dumps(job)], cwd=str(elsewhere), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(job["report"], encoding="utf-8") as f:
        report = json.load(f)
    return {"roots": roots, "report": report, "pretrain_ckpt": pretrain_ckpt, "data": data, "weights": weights}


def _ran(exports, name: str) -> str:
    result = exports["report"][name]
    assert result["error"] is None, result["error"]
    # the code that ran is the exported copy, not the repository's
    assert result["custom_file"].startswith(os.path.join(exports["roots"]["reclf_pretrain"], "scripts"))
    return exports["roots"][name]


def _ts_matches(root: str, reference: torch.nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """models/model.ts (written by ckpt_export in the subprocess) == the repository's network."""
    scripted = torch.jit.load(os.path.join(root, "models", "model.ts"))
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = scripted(x)
        torch.testing.assert_close(out, reference.eval()(x), atol=1e-5, rtol=1e-4)
    return out


@pytest.mark.slow
def test_pretrain_export_runs_anywhere_and_matches_the_repository(exports, tmp_path):
    from custom.engines.pretrained import load_pretrained

    root = _ran(exports, "reclf_pretrain")
    assert exports["report"]["reclf_pretrain"]["done"] == ["inference.yaml", "evaluate.yaml", "verify_net_in_out",
                                                          "ckpt_export"], exports["report"]
    exported = torch.load(os.path.join(root, "eval", "embeddings.pt"), weights_only=True)
    run_bundle("inference.yaml", ckpt=exports["pretrain_ckpt"], output_dir=str(tmp_path), **exports["data"], **TINY)
    reference = torch.load(os.path.join(str(tmp_path), "eval", "embeddings.pt"), weights_only=True)
    assert exported["image"].shape == (32, 128) and exported["paths"] == reference["paths"]
    torch.testing.assert_close(exported["image"], reference["image"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(exported["report"], reference["report"], atol=1e-5, rtol=1e-4)
    metrics = json.load(open(os.path.join(root, "eval", "metrics.json"), encoding="utf-8"))
    assert metrics["n_samples"] == 32 and 0 <= metrics["i2t_recall@10"] <= 1
    model, _ = load_pretrained(exports["pretrain_ckpt"])  # the full two-tower model, in eval mode
    image_tower = _Forward(lambda x: model.encode_image(x, local=False)["global"])
    assert _ts_matches(root, image_tower, (2, 1, 64, 64)).shape == (2, 128)


class _Forward(torch.nn.Module):
    """A function as a module (the reference side of :func:`_ts_matches`)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@pytest.mark.slow
def test_cls_export_classifies_and_zero_shots_with_its_packaged_pretraining(exports, monkeypatch):
    from custom.nets.classifier import ImageClassifier

    root = _ran(exports, "reclf_cls")
    predictions = json.load(open(os.path.join(root, "eval", "predictions.json"), encoding="utf-8"))
    model_json = json.load(open(os.path.join(root, "models", "model.json"), encoding="utf-8"))
    assert predictions["n_samples"] == 32 and predictions["class_names"] == model_json["class_names"]
    # MONAI Label's way into the exported bundle (its network_def, pre/post-processing) gives the same scores
    monkeypatch.setattr(sys, "path", list(sys.path))  # custom_path inserts into sys.path
    network, pre, inferer, post, _ = monai_label_pieces(os.path.join(root, "configs", "inference.yaml"), root)
    first = predictions["predictions"][0]
    with torch.no_grad():
        probs = post({"pred": inferer(pre({"image": first["image"]})["image"][None], network)[0]})["pred"]
    expected = [first["scores"][c] for c in model_json["class_names"]]
    torch.testing.assert_close(torch.as_tensor(probs).float(), torch.tensor(expected), atol=1e-4, rtol=1e-4)
    zero_shot = json.load(open(os.path.join(root, "eval", "zero_shot.json"), encoding="utf-8"))
    assert zero_shot["checkpoint"] == os.path.join(root, "models", "pretrained", "model.pt")
    assert _sha256(zero_shot["checkpoint"]) == _sha256(exports["pretrain_ckpt"])
    meta = json.load(open(os.path.join(root, "configs", "metadata.json"), encoding="utf-8"))
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(model_json["class_names"])
    assert list(pred["channel_def"].values()) == model_json["class_names"]
    assert "classification" in meta["task"].lower()  # MONAI Label's bundle app reads the task type
    net = ImageClassifier(len(model_json["class_names"]), image_encoder=model_json["image_encoder"])
    net.load_state_dict(torch.load(exports["weights"]["reclf_cls"], weights_only=True))
    assert _ts_matches(root, net, (2, 1, 64, 64)).shape == (2, len(model_json["class_names"]))


@pytest.mark.slow
def test_seg_export_segments_anywhere(exports):
    from custom.nets.seg_unet import SegUNet

    root = _ran(exports, "reclf_seg")
    segmentations = json.load(open(os.path.join(root, "eval", "segmentations.json"), encoding="utf-8"))
    assert segmentations["n_samples"] == 32 and all(os.path.isfile(p["mask"]) for p in segmentations["predictions"])
    train = yaml.safe_load(open(os.path.join(root, "configs", "train.yaml"), encoding="utf-8"))
    assert train["pretrained_ckpt"] == ""  # exported with --pretrained none: random init, not bundles/...
    model_json = json.load(open(os.path.join(root, "models", "model.json"), encoding="utf-8"))
    net = SegUNet(image_encoder=model_json.get("image_encoder", "resnet18"))
    net.load_state_dict(torch.load(exports["weights"]["reclf_seg"], weights_only=True))
    assert _ts_matches(root, net, (1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.slow
def test_export_layout_zip_and_large_files(exports):
    root = exports["roots"]["reclf_pretrain"]
    for path in ("configs/metadata.json", "configs/logging.conf", "models/model.json", "models/text",
                 "scripts/custom/__init__.py", "scripts/custom/nets/image_tower.py", "docs/README.md",
                 "docs/data_license.txt", "LICENSE", "large_files.yml", "requirements.txt"):
        assert os.path.exists(os.path.join(root, path)), path
    assert not os.path.exists(os.path.join(root, "models", "train_state.pt"))
    assert os.path.isfile(os.path.join(exports["roots"]["reclf_cls"], "configs", "prompts", "demo.yaml"))
    large = yaml.safe_load(open(os.path.join(root, "large_files.yml"), encoding="utf-8"))["large_files"]
    assert large == [{"path": "models/model.pt", "url": "", "hash_val": _sha256(exports["pretrain_ckpt"]),
                      "hash_type": "sha256"}]
    cls_large = yaml.safe_load(open(os.path.join(exports["roots"]["reclf_cls"], "large_files.yml")))["large_files"]
    assert [e["path"] for e in cls_large] == ["models/model.pt", "models/pretrained/model.pt"]
    # the zip holds the folder as it was exported (NAME/... inside); the runs added eval/ and model.ts since
    with zipfile.ZipFile(root + ".zip") as archive:
        names = set(archive.namelist())
    assert "reclf_pretrain/configs/inference.yaml" in names and "reclf_pretrain/models/model.pt" in names
    assert not [n for n in names if "__pycache__" in n or "/eval/" in n or n.endswith(".ts")]
    for config in os.listdir(os.path.join(root, "configs")):
        if not os.path.isfile(os.path.join(root, "configs", config)):
            continue  # prompts/, recipes/: copied as they are (no $from custom in them)
        text = open(os.path.join(root, "configs", config), encoding="utf-8").read()
        assert not re.search(r"^\s*- \$from custom", text, re.M) and "bundle_root: bundles/" not in text, config
    readme = open(os.path.join(root, "docs", "README.md"), encoding="utf-8").read()
    assert "## Using this exported bundle" in readme and "ckpt_export network_def" in readme


@pytest.mark.slow
def test_bundle_root_follows_an_unzipped_copy_and_says_when_lost(exports, tmp_path, monkeypatch):
    """Unzipped elsewhere (the exported folder gone), bundle_root is the current directory when that
    is the bundle; anywhere else custom_path stops with the fix (--bundle_root)."""
    from monai.bundle import ConfigParser

    out = tmp_path / "moved"
    folder = export_bundle("reclf_seg", str(out), weights=exports["weights"]["reclf_seg"], pretrained="none")
    os.rename(folder, str(tmp_path / "gone"))
    with zipfile.ZipFile(folder + ".zip") as archive:
        archive.extractall(str(tmp_path / "unzipped"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # custom_path inserts into sys.path
    config = str(tmp_path / "unzipped" / "reclf_seg" / "configs" / "inference.yaml")
    monkeypatch.chdir(str(tmp_path / "unzipped" / "reclf_seg"))
    parser = ConfigParser()
    parser.read_config(config)
    assert parser.get_parsed_content("bundle_root") == str(tmp_path / "unzipped" / "reclf_seg")
    assert parser.get_parsed_content("custom_path") == str(tmp_path / "unzipped" / "reclf_seg" / "scripts")
    monkeypatch.chdir(str(tmp_path))
    parser = ConfigParser()
    parser.read_config(config)
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the FileNotFoundError of the expression
        parser.get_parsed_content("custom_path")
    assert "holds no scripts/custom: pass --bundle_root" in exception_text(err.value)


@pytest.mark.parametrize("name", BUNDLES)
def test_refuses_without_trained_weights(name, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        export_bundle(name, str(tmp_path / "out"), weights=str(tmp_path / "never_trained" / "model.pt"))
    message = str(err.value)
    assert "no trained weights yet" in message
    assert f"python -m monai.bundle run --config_file bundles/{name}/configs/train.yaml" in message
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_refuses_a_checkpoint_without_model_json(tmp_path):
    torch.save({}, str(tmp_path / "model.pt"))
    with pytest.raises(FileNotFoundError, match="model.json"):
        export_bundle("reclf_seg", str(tmp_path / "out"), weights=str(tmp_path / "model.pt"))


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_has_the_model_zoo_fields(name):
    with open(os.path.join(REPO, "bundles", name, "configs", "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert zoo_metadata_problems(meta) == []
    assert meta["schema"] == SCHEMA_URL and set(ZOO_REQUIRED) <= set(meta)
    if name == "reclf_cls":
        assert "classification" in meta["task"].lower()


def test_metadata_check_names_what_is_wrong():
    with open(os.path.join(REPO, "bundles", "reclf_cls", "configs", "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    broken = copy.deepcopy(meta)
    del broken["copyright"]
    broken["version"] = "0.2.0"
    broken["network_data_format"]["inputs"]["image"]["num_channels"] = True  # a bool is not an integer
    del broken["network_data_format"]["outputs"]["pred"]["dtype"]
    problems = zoo_metadata_problems(broken)
    assert "metadata: missing required key 'copyright'" in problems
    assert "metadata: version '0.2.0' has no changelog entry" in problems
    assert any(p.startswith("metadata.network_data_format.inputs.image.num_channels: expected integer") for p in problems)
    assert "metadata.network_data_format.outputs.pred: missing required key 'dtype'" in problems


@pytest.mark.parametrize("name", BUNDLES)
def test_monai_verify_metadata_against_the_written_out_schema(name, tmp_path):
    pytest.importorskip("jsonschema")  # monai's verify_metadata needs it; not a project requirement
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(ZOO_META_SCHEMA))  # present: verify_metadata does not download
    verify_metadata(meta_file=os.path.join(REPO, "bundles", name, "configs", "metadata.json"), filepath=str(schema))


def test_expression_rewrite():
    names = {"demo", "data", "classifier_meta"}
    assert rewrite_expression("$demo.ensure_default_demo(@datalist, @demo_dir)", names) == \
        "$@custom_demo.ensure_default_demo(@datalist, @demo_dir)"
    assert rewrite_expression("$list(data.image_transform(@image_size).transforms) + [x.data, 'data.y']", names) == \
        "$list(@custom_data.image_transform(@image_size).transforms) + [x.data, 'data.y']"
    assert rewrite_expression("$classifier_meta(@ckpt, 'class_names', list(demo.FINDINGS))", names) == \
        "$@custom_classifier_meta(@ckpt, 'class_names', list(@custom_demo.FINDINGS))"
    assert rewrite_expression("$@train#data if dataset else data_dir", names) == "$@train#data if dataset else data_dir"
    assert rewrite_expression("$import data", names) == "$import data"
    with pytest.raises(ValueError, match="binds 'data'"):
        rewrite_expression("$lambda data: data.x", names)
