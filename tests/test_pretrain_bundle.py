"""The pretraining bundle end to end: train, evaluate, infer, resume, CLI switches, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import PRETRAIN_CONFIGS, REPO, TINY, exception_text, run_bundle

PRETRAIN_KEYS = ("objective", "srm", "irm", "local_negatives", "topk", "image_encoder", "image_weights",
                 "text_encoder", "init_ckpt", "resume")
METRIC_KEYS = ("i2t_recall@1", "i2t_recall@5", "i2t_recall@10", "t2i_recall@1", "t2i_recall@5",
               "t2i_recall@10", "n_samples", "eval_split", "checkpoint")


def _load(name: str) -> dict:
    with open(os.path.join(PRETRAIN_CONFIGS, name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_pretraining_keys_in_train_configs():
    for name in ("train.yaml", "multi_gpu_train.yaml"):
        config = {**_load("train.yaml"), **_load(name)}
        assert not [k for k in PRETRAIN_KEYS if k not in config], name


def test_metadata_has_model_zoo_fields():
    with open(os.path.join(PRETRAIN_CONFIGS, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    for key in ("version", "changelog", "monai_version", "pytorch_version", "network_data_format", "name"):
        assert key in meta
    assert meta["version"] in meta["changelog"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert len(image["spatial_shape"]) == 2 and image["num_channels"] == 1


def test_train_writes_self_describing_checkpoint(pretrained):
    from custom.engines.pretrained import load_pretrained

    models = os.path.join(pretrained, "models")
    for name in ("model.pt", "model.json", "train_state.pt", "text/tokenizer.json", "text/config.json"):
        assert os.path.isfile(os.path.join(models, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(pretrained, "logs")))
    state = torch.load(os.path.join(models, "model.pt"), weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    model, tokenizer = load_pretrained(os.path.join(models, "model.pt"))  # loads strictly
    assert model.objective == "reclf" and model.scorer.srm is not None and len(tokenizer) > 50


def test_evaluate_writes_metric_keys(pretrained, tiny_datalist):
    run_bundle("evaluate.yaml", dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist,
               output_dir=pretrained, image_size=64, device="cpu")
    with open(os.path.join(pretrained, "eval", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert all(k in metrics for k in METRIC_KEYS)
    assert metrics["n_samples"] == 32 and metrics["eval_split"] == "test"
    assert all(0.0 <= metrics[k] <= 1.0 for k in METRIC_KEYS[:6])
    assert metrics["i2t_recall@10"] >= metrics["i2t_recall@5"] >= metrics["i2t_recall@1"]


def test_inference_embeds_datalist(pretrained, tiny_datalist):
    run_bundle("inference.yaml", dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist,
               output_dir=pretrained, image_size=64, device="cpu", split="validation")
    emb = torch.load(os.path.join(pretrained, "eval", "embeddings.pt"), weights_only=True)
    assert emb["image"].shape == (32, 128) and emb["report"].shape == (32, 128)
    torch.testing.assert_close(emb["image"].norm(dim=1), torch.ones(32))
    assert len(emb["paths"]) == 32


def _weights(out_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(out_dir, "models", "model.pt"), weights_only=True)


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tiny_datalist, tmp_path):
    common = dict(dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist, val_interval=100, **TINY)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_bundle("train.yaml", output_dir=straight, epochs=4, **common)
    run_bundle("train.yaml", output_dir=resumed, epochs=2, **common)
    partial = _weights(resumed)
    run_bundle("train.yaml", output_dir=resumed, epochs=4, resume=True, **common)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    # and training really continued after the resume
    assert any(not torch.equal(partial[k], b[k]) for k in b if b[k].is_floating_point())


def test_resume_without_state_is_a_clear_error(tiny_datalist, tmp_path):
    with pytest.raises(Exception) as info:
        run_bundle("train.yaml", dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist,
                   output_dir=str(tmp_path), epochs=1, resume=True, **TINY)
    assert "no training state" in exception_text(info.value)


def test_missing_image_names_the_row(tiny_datalist, tmp_path):
    with open(tiny_datalist, encoding="utf-8") as f:
        content = json.load(f)
    content["training"][3]["image"] = "/nonexistent/cxr.png"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(Exception) as info:
        run_bundle("train.yaml", dataset_dir=str(tmp_path), datalist=str(bad), output_dir=str(tmp_path),
                   epochs=1, **TINY)
    message = exception_text(info.value)
    assert "training[3]" in message and "/nonexistent/cxr.png" in message


def _cli(*args: str, timeout: int = 600, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_srm_false_really_removes_srm(tiny_datalist, tmp_path):
    """fire hands `--srm false` over as the string 'false': it must switch SRM off."""
    proc = _cli(sys.executable, "-m", "monai.bundle", "run", "--config_file",
                os.path.join(PRETRAIN_CONFIGS, "train.yaml"), "--dataset_dir", os.path.dirname(tiny_datalist),
                "--datalist", tiny_datalist, "--output_dir", str(tmp_path), "--epochs", "1", "--srm", "false",
                "--image_size", "64", "--batch_size", "16", "--device", "cpu", "--val_interval", "100")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = _weights(str(tmp_path))
    assert not any(".srm." in k for k in state), "SRM parameters present after --srm false"
    assert any(".irm." in k for k in state)
    with open(tmp_path / "models" / "model.json", encoding="utf-8") as f:
        assert json.load(f)["model"]["srm"] is False


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_datalist, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    configs = [os.path.join(PRETRAIN_CONFIGS, n) for n in ("train.yaml", "multi_gpu_train.yaml")]
    proc = _cli(torchrun, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file",
                str(configs), "--dataset_dir", os.path.dirname(tiny_datalist), "--datalist", tiny_datalist,
                "--output_dir", str(tmp_path), "--epochs", "1", "--image_size", "64", "--batch_size", "8",
                "--device", "cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = _weights(str(tmp_path))
    assert not any(k.startswith("module.") for k in state)
