"""benchmarks/evidence*.py and the image-encoder stage options it relies on: the ridge probe and the
diagnostics against hand-made inputs, the encoder's default path unchanged, a checkpoint that
rebuilds its stages, and a tiny learning-curve study (2 arms, 1 seed, 2 snapshots, 32 px) whose
rerun is served from the cache."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from benchmarks import evidence, evidence_diagnostics, evidence_followups


def test_ridge_r2_recovers_a_linear_map_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = x @ rng.normal(size=(6, 2)) + 0.01 * rng.normal(size=(400, 2))
    assert evidence_diagnostics.ridge_r2(x, y, alpha=1e-3) > 0.99
    assert evidence_diagnostics.ridge_r2(x, rng.normal(size=(400, 2))) < 0.05  # unrelated targets: no fit out of sample
    assert evidence_diagnostics.ridge_r2(x[:4], y[:4]) is None  # too few rows
    assert evidence_diagnostics.ridge_r2(x, np.ones((400, 2))) is None  # no variance to explain


def test_diagnostics_of_a_hand_made_record():
    words = ["small", "left", "effusion", "large", "right", "nodule", "comparison", "none"]
    t = len(words)
    srm = np.full((2, t, t), 0.0)
    srm[:, 1, 2] = 0.75  # "left" attends to its own finding word (effusion, on the left)
    srm[:, 1, 5] = 0.25
    srm[:, 4, 5] = 0.5  # "right" -> nodule (its own) and the rest elsewhere
    srm[:, 4, 0] = 0.5
    beta = np.array([1, 2, 4, 1, 2, 4, 0.5, 0.5], dtype=float)
    beta /= beta.sum()
    attention = np.full((t, 4), 0.25)
    record = {"words": words, "grid": (2, 2), "attention": attention, "importance": beta, "irm": True,
              "srm_attention": srm, "item": {"findings": [{"finding": "effusion", "side": "left"},
                                                           {"finding": "nodule", "side": "right"}]}}
    filler = evidence_diagnostics.filler_vocabulary()
    assert {"comparison", "none"} <= filler and not {"left", "effusion", "small", "no"} & filler
    out = evidence_diagnostics.diagnostics([record], None, None, filler)
    assert out["srm/own_mass"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["srm/other_mass"] == pytest.approx((0.25 + 0.0) / 2)
    assert out["srm/chance"] == pytest.approx(1 / t) and out["srm/n_side_words"] == 2
    scale = t / 15.0  # beta * T
    assert out["irm/finding"] == pytest.approx(4 * scale)
    assert out["irm/side"] == pytest.approx(2 * scale)
    assert out["irm/filler"] == pytest.approx(0.5 * scale)
    assert "probe/r2" not in out  # no matchings given


def test_image_encoder_stages_default_unchanged_and_truncated():
    from custom.nets.image_encoder import ImageEncoder

    torch.manual_seed(0)
    enc = ImageEncoder("resnet18").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = enc(x)
        net = enc.backbone  # the path before the option existed: layer3 grid, pooled layer4
        h = net.maxpool(net.act(net.bn1(net.conv1((x - enc.mean) / enc.std))))
        local = net.layer3(net.layer2(net.layer1(h)))
        torch.testing.assert_close(out["local"], local, rtol=0, atol=0)
        torch.testing.assert_close(out["global"], net.layer4(local).mean((2, 3)), rtol=1e-6, atol=1e-6)
    small = ImageEncoder("resnet18", local_layer="layer1", global_layer="layer2").eval()
    small.load_state_dict(enc.state_dict())  # same parameters (layer3/4 kept, not run)
    with torch.no_grad():
        out = small(torch.rand(2, 1, 32, 32))
    assert out["local"].shape == (2, 64, 8, 8) and out["global"].shape == (2, 128)
    assert (small.local_channels, small.global_channels) == (64, 128)
    with pytest.raises(ValueError, match="comes before"):
        ImageEncoder("resnet18", local_layer="layer3", global_layer="layer2")
    with pytest.raises(ValueError, match="image_local_layer"):
        ImageEncoder("resnet18", local_layer="layer5")


def test_tiny_curve_study_end_to_end_and_cache(tmp_path):
    cache, out = str(tmp_path / "cache"), str(tmp_path / "out")
    argv = ["--cache", cache, "--out", out, "--arms", "[convirt,reclf]", "--seeds", "[0]", "--epochs", "2",
            "--eval_epochs", "[1,2]", "--demo_train", "32", "--demo_val", "48", "--demo_test", "48", "--no_plot"]
    obj = evidence.main(argv)
    summary = obj["summary"]
    assert set(summary) == {"convirt", "reclf"}
    for arm in ("convirt", "reclf"):
        s = summary[arm]
        assert s["epochs"] == [1, 2] and s["steps"] == [2, 4]  # 32 pairs / batch 16 = 2 steps an epoch
        side = s["metrics"]["side/auroc"][-1]["mean"]
        assert 0.0 <= side <= 1.0
        assert 0.0 <= s["metrics"]["zs/auroc_mean"][-1]["mean"] <= 1.0
    assert "grounding" not in summary["convirt"]["metrics"]  # no word-region attention
    reclf = summary["reclf"]["metrics"]
    chance = reclf["grounding_uniform"][-1]["mean"]
    assert 0.0 < chance < 1.0 and 0.0 <= reclf["grounding"][-1]["mean"] <= 1.0
    assert 0.0 <= reclf["srm/own_mass"][-1]["mean"] <= 1.0 and reclf["irm/finding"][-1]["mean"] > 0
    assert "probe/r2" in reclf and "probe/r2_srm" in reclf
    # the final table: the last snapshot on the test split, beside (not instead of) the validation curves
    assert set(obj["final"]) == {"convirt", "reclf"} and obj["final"]["reclf"]["epochs"] == [2]
    final_side = obj["final"]["reclf"]["metrics"]["side/auroc"][0]["mean"]
    assert 0.0 <= final_side <= 1.0
    run = os.path.join(cache, "reclf", "seed0")
    test_eval = json.load(open(os.path.join(run, "evals", "test", "epoch002.json"), encoding="utf-8"))
    assert test_eval["side/auroc"] == final_side and test_eval["step"] == 4
    assert test_eval["zs/auroc_mean"] != summary["reclf"]["metrics"]["zs/auroc_mean"][-1]["mean"]  # other images
    meta = json.load(open(os.path.join(run, "ckpts", "epoch002", "model.json"), encoding="utf-8"))
    assert (meta["image_local_layer"], meta["image_global_layer"]) == ("layer1", "layer2")
    from custom.engines.pretrained import load_pretrained

    model, _ = load_pretrained(os.path.join(run, "ckpts", "epoch002", "model.pt"))
    assert model.image_encoder.local_layer == "layer1"
    with torch.no_grad():
        assert model.encode_image(torch.rand(1, 1, 32, 32))["grid_size"] == (8, 8)
    assert not os.path.exists(os.path.join(run, "pretrain", "models", "train_state.pt"))
    # rerun: served from the cache (no retraining, no re-evaluation)
    stamp = os.path.getmtime(os.path.join(run, "evals", "epoch001.json"))
    ckpt_stamp = os.path.getmtime(os.path.join(run, "ckpts", "epoch001", "model.pt"))
    again = evidence.main(argv)
    assert again["summary"]["reclf"]["metrics"]["side/auroc"] == summary["reclf"]["metrics"]["side/auroc"]
    assert os.path.getmtime(os.path.join(run, "evals", "epoch001.json")) == stamp
    assert os.path.getmtime(os.path.join(run, "ckpts", "epoch001", "model.pt")) == ckpt_stamp
    with open(os.path.join(out, "evidence_demo.md"), encoding="utf-8") as f:
        assert "RECLF (full)" in f.read()
    with pytest.raises(ValueError, match="other settings"):
        evidence.main(argv[:-1] + ["--epochs", "3"])
    # --merge: one arm aggregated here, the other carried over from an earlier output, as it was
    earlier = os.path.join(out, "evidence_demo.json")
    shutil.copy(earlier, str(tmp_path / "earlier.json"))
    merged = evidence.main(["--aggregate_only", *argv[:4], "--arms", "[reclf]", *argv[6:],
                            "--merge", f"[{tmp_path / 'earlier.json'}]"])
    assert list(merged["summary"]) == ["convirt", "reclf"] and merged["settings"]["arms"] == ["convirt", "reclf"]
    assert merged["summary"]["convirt"] == json.load(open(str(tmp_path / "earlier.json")))["summary"]["convirt"]
    assert merged["runs"]["reclf"][0]["curve"]["2"]["step"] == 4  # the per-run curves travel with the output
    with pytest.raises(ValueError, match=r"other settings \(epochs\)"):
        evidence.read_earlier_output(str(tmp_path / "earlier.json"), {**obj["settings"], "epochs": 3})
    assert merged["final"]["convirt"] == json.load(open(str(tmp_path / "earlier.json")))["final"]["convirt"]

    # the downstream tasks on the runs' last snapshots (no retraining), with a random-init
    # encoder of the same depth; label fractions cut to one to keep this short
    settings = dict(obj["settings"], arms=["reclf"])
    study = evidence.EvidenceStudy(cache, settings, os.path.join(cache, "data"), os.path.join(cache, "data", "datalist.json"))
    down = evidence_followups.run_downstream(study, settings, out, "test", plot=False,
                                   overrides={"probe_fractions": [1.0], "seg_fractions": [1.0], "seg_train_samples": 64})
    assert set(down["summary"]) == {"random_init", "reclf"}
    for arm in ("random_init", "reclf"):
        assert 0.0 <= down["summary"][arm]["lp100/auroc_mean"]["mean"] <= 1.0
        assert 0.0 <= down["summary"][arm]["seg100/dice"]["mean"] <= 1.0
    assert "zs/auroc_mean" in down["summary"]["reclf"] and "zs/auroc_mean" not in down["summary"]["random_init"]
    pretrain_done = json.load(open(os.path.join(run, "pretrain_done.json"), encoding="utf-8"))
    assert down["runs"]["reclf"][0]["stages"]["pretrain"]["cpu_s"] == pretrain_done["cpu_s"]  # reused, not retrained
    assert [c["key"] for c in down["columns"]][:2] == ["zs/auroc_mean", "lp100/auroc_mean"]  # no finding × side here
    stage = json.load(open(os.path.join(cache, "downstream", "random_init", "seed0", "stages", "lp100.json"), encoding="utf-8"))
    assert stage["metrics"]["encoder_depth"] == "layer2"  # the baseline stops where the pretraining did
    # figures of the fixed validation studies from the last snapshot (ConVIRT has no attention to show)
    written = evidence_followups.render_figures(study, ["convirt", "reclf"], out)
    assert written == [os.path.join(out, "evidence_visualize", "reclf")]
    assert len([f for f in os.listdir(written[0]) if f.startswith("validation_") and f.endswith(".png")]) == 3
    # interventions at inference: "as trained" is the snapshot's own validation number
    inter = evidence_followups.run_interventions(study, ["convirt", "reclf"], out)
    assert list(inter["summary"]) == ["reclf"]
    trained = inter["summary"]["reclf"]
    assert trained["trained/side/auroc"]["mean"] == pytest.approx(summary["reclf"]["metrics"]["side/auroc"][-1]["mean"])
    assert {"uniform_irm/side/auroc", "no_srm/side/auroc"} <= set(trained)


def test_srm_locality_option_off_by_default_and_a_distance_prior_when_on():
    from custom.nets.relations import SemanticRelationModule

    off = SemanticRelationModule(8, heads=2)
    assert all(layer.locality_gain is None for layer in off.layers)  # default: DESIGN §2's SRM, no new parameters
    torch.manual_seed(0)
    on = SemanticRelationModule(8, heads=2, locality=0.5)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if "locality" not in k})
    x, mask = torch.randn(3, 6, 8), torch.ones(3, 6, dtype=torch.bool)
    slots = torch.arange(6)
    distance = (slots.view(-1, 1) - slots.view(1, -1)).abs()
    torch.testing.assert_close(on(x, mask)[0], off(x, mask)[0])  # no distances given: no bias
    assert not torch.allclose(on(x, mask, distance=distance)[0], off(x, mask, distance=distance)[0])
    with torch.no_grad():  # content-free queries/keys: the attention is exactly the distance prior
        on.layers[0].qkv.weight.zero_()
        on.layers[0].qkv.bias.zero_()
    _, attn = on(x, mask, distance=distance)
    prior = torch.softmax(-0.5 * distance.float(), dim=-1)
    torch.testing.assert_close(attn[0, 0], prior)


def test_reclf_model_passes_srm_locality_and_rebuilds_it(tmp_path):
    from benchmarks.throughput import make_batch, make_tokenizer
    from custom.engines.pretrained import build_reclf_model, load_pretrained, save_pretrained

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    net = build_reclf_model(tokenizer, srm_locality="0.5", image_local_layer="layer1", image_global_layer="layer2").eval()
    assert net.scorer.srm.layers[0].locality_gain.tolist() == [0.5, 0.5]
    batch = make_batch(tokenizer, 3, 32, None)
    with torch.no_grad():
        out = net(batch["image"], batch["input_ids"], batch["attention_mask"], batch["word_ids"])
    assert out["local_logits"].shape == (3, 3) and torch.isfinite(out["local_logits"]).all()
    save_pretrained(net, tokenizer, str(tmp_path))
    again, _ = load_pretrained(str(tmp_path / "model.pt"))
    assert again.scorer.srm_locality == 0.5 and again.build_config["model"]["srm_locality"] == 0.5
    with torch.no_grad():
        out2 = again(batch["image"], batch["input_ids"], batch["attention_mask"], batch["word_ids"])
    torch.testing.assert_close(out2["local_logits"], out["local_logits"])
