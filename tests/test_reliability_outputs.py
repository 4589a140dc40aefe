"""Reliability class 1: a failed or empty re-run never destroys a trained model, and a
checkpoint's files are verifiably one set (docs/reliability.md, "Outputs")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

from conftest import TINY, exception_text, run_bundle


def _digest(folder: str) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative names)."""
    out = {}
    for current, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(current, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture()
def trained(tiny_datalist, tmp_path):
    """A fresh 1-epoch pretraining run (its own output_dir, so tests may damage it)."""
    out = str(tmp_path / "run")
    common = dict(dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist, output_dir=out,
                  val_interval=100, **TINY)
    run_bundle("train.yaml", epochs=1, **common)
    return out, common


def _bad_datalist(tiny_datalist: str, tmp_path) -> str:
    with open(tiny_datalist, encoding="utf-8") as f:
        content = json.load(f)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    content["training"][5]["image"] = str(broken)
    # another vocabulary too: a tokenizer trained on these reports differs from the first run's
    for item in content["training"]:
        item["report"] = item["report"] + " xylophone quokka"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(content))
    return str(path)


def test_a_failed_rerun_leaves_the_trained_model_as_it_was(trained, tiny_datalist, tmp_path):
    out, common = trained
    models = os.path.join(out, "models")
    before = _digest(models)
    assert {"model.pt", "model.json", "text/tokenizer.json", "train_state.pt"} <= set(before)
    with pytest.raises(Exception) as info:
        run_bundle("train.yaml", epochs=1, **dict(common, datalist=_bad_datalist(tiny_datalist, tmp_path)))
    assert "training[5]" in exception_text(info.value)
    assert _digest(models) == before  # not one byte of models/ changed: text/ included

    # and the run it came from still resumes (the bug: a rewritten tokenizer broke --resume)
    run_bundle("train.yaml", epochs=2, resume=True, **common)
    from custom.engines.pretrained import load_pretrained

    load_pretrained(os.path.join(models, "model.pt"))


def test_a_mixed_checkpoint_set_is_refused_at_load(trained, tmp_path):
    from custom.checkpoints import CheckpointError
    from custom.engines.pretrained import load_pretrained

    out, _ = trained
    models = os.path.join(out, "models")
    with open(os.path.join(models, "model.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["format"] == "reclf-checkpoint/2" and meta["kind"] == "pretrain"
    assert set(meta["files"]) >= {"model.pt", "text/tokenizer.json", "text/config.json"}
    # another run's tokenizer dropped beside these weights
    tok = os.path.join(models, "text", "tokenizer.json")
    original = open(tok, "rb").read()
    data = json.loads(original)
    data["model"]["vocab"]["zzzz"] = len(data["model"]["vocab"])
    open(tok, "w", encoding="utf-8").write(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"tokenizer.json.*does not belong"):
        load_pretrained(os.path.join(models, "model.pt"))
    # weights of another checkpoint
    open(tok, "wb").write(original)
    load_pretrained(os.path.join(models, "model.pt"))  # the set is whole again
    shutil.copy(os.path.join(models, "train_state.pt"), os.path.join(models, "model.pt"))
    with pytest.raises(CheckpointError, match=r"model.pt.*does not belong"):
        load_pretrained(os.path.join(models, "model.pt"))


def test_evaluate_refuses_a_mixed_set(trained):
    out, common = trained
    with open(os.path.join(out, "models", "text", "config.json"), "a", encoding="utf-8") as f:
        f.write(" ")
    with pytest.raises(Exception) as info:
        run_bundle("evaluate.yaml", **{k: common[k] for k in ("dataset_dir", "datalist", "output_dir")},
                   image_size=64, device="cpu")
    assert "does not belong" in exception_text(info.value)


def test_interrupted_tokenizer_write_keeps_the_previous_text_folder(trained, monkeypatch):
    """The tokenizer is staged in a fresh folder and swapped in; a crash while writing it leaves the
    previous text/ (and so the previous, consistent set) in place."""
    from custom.checkpoints import write_checkpoint
    from custom.engines.pretrained import load_pretrained

    out, _ = trained
    ckpt = os.path.join(out, "models", "model.pt")
    model, tokenizer = load_pretrained(ckpt)
    before = _digest(os.path.join(out, "models"))
    tokenizer.add_tokens(["brandnewword"])  # a different tokenizer: text/ would be replaced

    class Crash(RuntimeError):
        pass

    def crashing_save(directory, *args, **kwargs):
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write('{"trunc')  # half a file, then the process dies
        raise Crash("killed")

    monkeypatch.setattr(tokenizer, "save_pretrained", crashing_save)
    with pytest.raises(Crash):
        write_checkpoint(ckpt, model.state_dict(), model.build_config, "pretrain", tokenizer=tokenizer,
                         text_config=model.text_encoder.model.config)
    assert _digest(os.path.join(out, "models")) == before
    assert not [n for n in os.listdir(os.path.join(out, "models")) if n.startswith(".text")]
    load_pretrained(ckpt)  # still one verified set


def test_a_corrupt_checkpoint_is_not_a_checkpoint(tmp_path):
    from custom.checkpoints import CheckpointError, load_state

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    for path in (empty, truncated, listing):
        with pytest.raises(CheckpointError) as info:
            load_state(str(path))
        message = str(info.value)
        assert "not a checkpoint" in message and str(path) in message and "weights_only=False" not in message
