"""Opt-in: the real MONAI Label 0.8.5 server with the reclf app (not in the default run: its
environment takes several GB and minutes to install).

    RECLF_MONAILABEL=1 .venv/bin/python -m pytest -s -v tests/optin/test_monailabel_server.py

``RECLF_MONAILABEL_VENV`` names an existing MONAI Label environment (default
``apps/monailabel/.venv``; ``run.sh start`` creates or updates it). The test trains tiny weights
for both bundles with their own train.yaml (64 px, 1 epoch), makes a scratch studies folder of
real cxr-notes images with their lung masks as final labels (``run.sh studies``), starts the server
on 127.0.0.1 and a free port (``run.sh start``), posts real PNGs to the segmentation and
classification infer endpoints, trains ``reclf_seg`` through the server once, and stops the server.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA, TINY, run_bundle

pytestmark = pytest.mark.skipif(
    os.environ.get("RECLF_MONAILABEL") != "1",
    reason="opt-in (installs MONAI Label, several GB): set RECLF_MONAILABEL=1",
)

APP_DIR = os.path.join(REPO, "apps", "monailabel")
RUN_SH = os.path.join(APP_DIR, "run.sh")
CXR_NOTES = os.path.join(SHARED_DATA, "cxr-notes")
START_TIMEOUT_S = 900  # a cold start imports torch, MONAI and MONAI Label on 2 shared cores
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None,
             timeout: float = 600) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _lung_mask_rows() -> list[dict[str, str]]:
    with open(os.path.join(CXR_NOTES, "metadata.csv"), encoding="utf-8", newline="") as f:
        return [r for r in csv.DictReader(f) if r["lung_mask"]]


def _expected(bundle: str, image_path: str) -> np.ndarray:
    """The bundle's own pipeline in this environment (as the default contract test runs it): the
    (H, W) mask of reclf_seg, or the (C,) scores of reclf_cls."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle, "configs", "inference.yaml"))
    parser.config.update({"bundle_root": bundle})
    network = parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(os.path.join(bundle, "models", "model.pt"), weights_only=True), strict=True)
    data = parser.get_parsed_content("preprocessing")({"image": image_path})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network.eval())[0]
    pred = np.asarray(parser.get_parsed_content("postprocessing")(data)["pred"])
    return pred[0] if pred.ndim == 3 else pred


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_datalist):
    root = tmp_path_factory.mktemp("monailabel")
    models_dir, studies = str(root / "model"), str(root / "studies")
    env = dict(os.environ, RECLF_MONAILABEL_MODELS=models_dir)
    # bundle copies as the app reads them (run.sh bundles), then tiny weights from each train.yaml
    subprocess.run(["bash", RUN_SH, "bundles"], env=env, check=True)
    rows = _lung_mask_rows()
    datalist = str(root / "lungs.json")
    items = [{"image": os.path.join(CXR_NOTES, r["image"]), "mask": os.path.join(CXR_NOTES, r["lung_mask"])}
             for r in rows[:6]]
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump({"training": items[:5], "validation": items[5:]}, f)
    run_bundle(os.path.join(models_dir, "reclf_seg", "configs", "train.yaml"), bundle_root=os.path.join(models_dir, "reclf_seg"),
               dataset_dir="", datalist=datalist, pretrained_ckpt="", epochs=1, **TINY)
    run_bundle(os.path.join(models_dir, "reclf_cls", "configs", "train.yaml"), bundle_root=os.path.join(models_dir, "reclf_cls"),
               dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist, pretrained_ckpt="", epochs=1, **TINY)
    # a scratch copy of the real images, their lung masks as final labels (never ../shared itself)
    refused = subprocess.run(["bash", RUN_SH, "studies", os.path.join(SHARED_DATA, "scratch")], env=env,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "inside" in refused.stderr
    subprocess.run(["bash", RUN_SH, "studies", studies, "--lung-masks"], env=env, check=True)

    port = _free_port()
    log_path = str(root / "server.log")
    log = open(log_path, "w", encoding="utf-8")
    started = time.time()
    proc = subprocess.Popen(["bash", RUN_SH, "start", "--studies", studies, "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{open(log_path).read()[-5000:]}")
            try:
                status, _, body = _request(f"{url}/info/", timeout=10)
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() - started > START_TIMEOUT_S:
                raise AssertionError(f"server not up after {START_TIMEOUT_S} s:\n{open(log_path).read()[-5000:]}")
            time.sleep(3)
        print(f"\nMONAI Label up on {url} after {time.time() - started:.0f} s (studies {studies})", flush=True)
        yield {"url": url, "models_dir": models_dir, "studies": studies, "rows": rows, "log": log_path,
               "info": json.loads(body)}
    finally:
        if proc.poll() is None:  # the server's process group: this test started it
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        print(f"server stopped (exit {proc.returncode}); its log: {log_path}", flush=True)


def test_info_lists_both_models_with_declared_types(server):
    from custom.demo import FINDINGS

    info = server["info"]
    models = info["models"]
    print("info models:", json.dumps({k: {"type": v["type"], "labels": v["labels"], "dimension": v["dimension"]}
                                      for k, v in models.items()}), flush=True)
    print("info trainers:", sorted(info["trainers"]), flush=True)
    assert set(models) == {"reclf_seg", "reclf_cls"}
    assert models["reclf_seg"]["type"] == "segmentation" and models["reclf_seg"]["labels"] == {"foreground": 1}
    assert models["reclf_cls"]["type"] == "classification"
    assert models["reclf_cls"]["labels"] == {name: i for i, name in enumerate(FINDINGS)}
    assert models["reclf_seg"]["dimension"] == models["reclf_cls"]["dimension"] == 2
    assert sorted(info["trainers"]) == ["reclf_seg"]
    assert not any("sam" in name.lower() for name in models)


def test_segmentation_infer_returns_the_bundles_mask(server):
    from PIL import Image

    row = server["rows"][10]
    image_id = os.path.splitext(os.path.basename(row["image"]))[0]
    image_path = os.path.join(CXR_NOTES, row["image"])
    expected = _expected(os.path.join(server["models_dir"], "reclf_seg"), image_path)

    # an image of the studies folder, by id; the mask comes back as a PNG
    query = urllib.parse.urlencode({"image": image_id, "output": "image"})
    status, ctype, body = _request(f"{server['url']}/infer/reclf_seg?{query}", data=b"params=%7B%7D",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"}, method="POST")
    assert status == 200, body[:2000]
    out = server["studies"] + "_mask.png"
    with open(out, "wb") as f:
        f.write(body)
    with Image.open(out) as mask, Image.open(image_path) as image:
        print(f"seg infer {image_id}: {ctype}, {mask.format} {mask.mode} {mask.size} for image {image.size}, "
              f"values {sorted(np.unique(np.asarray(mask)).tolist())}, "
              f"foreground {float((np.asarray(mask) > 0).mean()):.3f}", flush=True)
        assert mask.format == "PNG" and mask.size == image.size
        got = np.asarray(mask)
    assert set(np.unique(got).tolist()) <= {0, 1}
    agreement = float((got == expected.astype(np.uint8)).mean())
    print(f"seg infer agrees with the bundle's own pipeline on {agreement:.4%} of pixels", flush=True)
    assert got.shape == expected.shape and agreement > 0.995

    # an uploaded file, JSON answer
    with open(image_path, "rb") as f:
        body, ctype = _multipart({"params": json.dumps({"device": "cpu"})}, {"file": (os.path.basename(image_path), f.read())})
    status, _, answer = _request(f"{server['url']}/infer/reclf_seg?output=json", data=body,
                                 headers={"Content-Type": ctype}, method="POST")
    assert status == 200, answer[:2000]
    result = json.loads(answer)
    print("seg infer (upload, json):", json.dumps({k: result[k] for k in ("label_names", "latencies")}), flush=True)
    assert result["label_names"] == {"foreground": 1} and result["latencies"]["total"] > 0


def test_classification_infer_returns_named_scores(server):
    from custom.demo import FINDINGS

    row = server["rows"][3]
    image_id = os.path.splitext(os.path.basename(row["image"]))[0]
    image_path = os.path.join(CXR_NOTES, row["image"])
    expected = _expected(os.path.join(server["models_dir"], "reclf_cls"), image_path)
    with open(image_path, "rb") as f:
        body, ctype = _multipart({"params": "{}"}, {"file": (os.path.basename(image_path), f.read())})
    status, _, answer = _request(f"{server['url']}/infer/reclf_cls", data=body, headers={"Content-Type": ctype},
                                 method="POST")
    assert status == 200, answer[:2000]
    result = json.loads(answer)
    print(f"cls infer {image_id}:", json.dumps(result["prediction"]), flush=True)
    assert [p["label"] for p in result["prediction"]] == list(FINDINGS)
    assert [p["idx"] for p in result["prediction"]] == list(range(len(FINDINGS)))
    scores = np.array([p["score"] for p in result["prediction"]])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_label_round_trip_into_the_scratch_studies(server):
    from PIL import Image

    # next unlabelled image (active learning "first"), a draft mask from reclf_seg, saved as final label
    status, _, answer = _request(f"{server['url']}/activelearning/first", data=b"{}",
                                 headers={"Content-Type": "application/json"}, method="POST")
    assert status == 200, answer[:2000]
    image_id = json.loads(answer)["id"]
    final = os.path.join(server["studies"], "labels", "final")
    assert not os.path.exists(os.path.join(final, f"{image_id}.png"))
    query = urllib.parse.urlencode({"image": image_id, "output": "image"})
    status, _, draft = _request(f"{server['url']}/infer/reclf_seg?{query}", data=b"params=%7B%7D",
                                headers={"Content-Type": "application/x-www-form-urlencoded"}, method="POST")
    assert status == 200, draft[:2000]
    body, ctype = _multipart({"params": "{}"}, {"label": (f"{image_id}.png", draft)})
    query = urllib.parse.urlencode({"image": image_id, "tag": "final"})
    status, _, answer = _request(f"{server['url']}/datastore/label?{query}", data=body,
                                 headers={"Content-Type": ctype}, method="PUT")
    assert status == 200, answer[:2000]
    saved = os.path.join(final, f"{image_id}.png")
    with Image.open(saved) as label, Image.open(os.path.join(server["studies"], f"{image_id}.png")) as image:
        print(f"label saved for {image_id}: {saved} {label.size} (image {image.size})", flush=True)
        assert label.size == image.size
    assert not os.path.exists(os.path.join(CXR_NOTES, "labels"))  # the shared data stays untouched


def test_segmentation_trains_from_the_studies_labels(server):
    model_pt = os.path.join(server["models_dir"], "reclf_seg", "models", "model.pt")
    before = os.stat(model_pt).st_mtime_ns
    params = {"max_epochs": 1, "val_split": 0.2, "device": "cpu", "multi_gpu": False}
    started = time.time()
    status, _, answer = _request(f"{server['url']}/train/reclf_seg?run_sync=true", data=json.dumps(params).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST", timeout=900)
    assert status == 200, answer[:2000]
    with open(os.path.join(os.path.dirname(model_pt), "model.json"), encoding="utf-8") as f:
        meta = json.load(f)
    n_labels = sum(1 for _ in os.listdir(os.path.join(server["studies"], "labels", "final")))
    print(f"seg train via the server: {time.time() - started:.0f} s, {n_labels} final labels -> n_train "
          f"{meta['n_train']}, n_val {meta['n_val']}, image_size {meta['image_size']}, "
          f"val dice {meta.get('val_dice', meta.get('metrics', {}))}", flush=True)
    assert os.stat(model_pt).st_mtime_ns > before
    assert meta["n_train"] + meta["n_val"] == n_labels and meta["image_size"] == TINY["image_size"]
    # the infer task reloads the new weights: its mask is the retrained bundle's own
    from PIL import Image

    row = server["rows"][10]
    image_path = os.path.join(CXR_NOTES, row["image"])
    query = urllib.parse.urlencode({"image": os.path.splitext(os.path.basename(row["image"]))[0], "output": "image"})
    status, _, answer = _request(f"{server['url']}/infer/reclf_seg?{query}", data=b"params=%7B%7D",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}, method="POST")
    assert status == 200, answer[:2000]
    out = server["studies"] + "_mask_retrained.png"
    with open(out, "wb") as f:
        f.write(answer)
    with Image.open(out) as mask:
        got = np.asarray(mask)
    expected = _expected(os.path.join(server["models_dir"], "reclf_seg"), image_path)
    agreement = float((got == expected.astype(np.uint8)).mean())
    print(f"seg infer after training: mask {got.shape[::-1]} (W, H), foreground {float(got.mean()):.3f}, "
          f"agrees with the bundle's own pipeline on {agreement:.4%} of pixels", flush=True)
    assert got.shape == expected.shape and agreement > 0.995
    with open(server["log"], encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert "Reload model from cache" in log
