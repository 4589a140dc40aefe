"""reclf_cls inference (the MONAI Label bundle contract, checked without MONAI Label) and the
GLoRIA / MGCA checkpoint converter, on checkpoints built here in the sources' key layouts."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, SHARED_DATA, exception_text, monai_label_pieces, run_bundle

CLS_CONFIGS = os.path.join(REPO, "bundles", "reclf_cls", "configs")
INFERENCE = os.path.join(CLS_CONFIGS, "inference.yaml")
PNG_DIR = os.path.join(SHARED_DATA, "cxr-notes", "images")
DICOM = os.path.join(SHARED_DATA, "dicom", "siim_cr_chest_monochrome2_jpeg_baseline.dcm")
COVID = ["COVID-19", "Other pneumonia", "No Finding"]


def _pngs(n: int) -> list[str]:
    return [os.path.join(PNG_DIR, f) for f in sorted(os.listdir(PNG_DIR))[:n]]


# ---- inference: the MONAI Label contract ------------------------------------------------------------
def _classifier_bundle(root, class_names, multi_label: bool, seed: int = 0) -> str:
    """A bundle folder as MONAI Label sees it: models/model.pt (ImageClassifier state dict) + model.json."""
    from custom.nets.classifier import ImageClassifier

    torch.manual_seed(seed)
    net = ImageClassifier(len(class_names), "resnet18")
    with torch.no_grad():
        net.head.bias.copy_(torch.linspace(-1, 1, len(class_names)))  # distinct, non-trivial scores
    models = os.path.join(str(root), "models")
    os.makedirs(models, exist_ok=True)
    torch.save(net.state_dict(), os.path.join(models, "model.pt"))
    meta = {"class_names": list(class_names), "multi_label": multi_label, "image_encoder": "resnet18", "image_size": 64}
    with open(os.path.join(models, "model.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    return str(root)


def test_inference_monai_label_contract(tmp_path):
    from monai.transforms import Compose, MapTransform

    from custom.data import image_transform
    from custom.demo import FINDINGS
    from custom.nets.classifier import ImageClassifier

    with open(os.path.join(CLS_CONFIGS, "metadata.json"), encoding="utf-8") as f:
        fmt = json.load(f)["network_data_format"]
    image_key, image_fmt = next(iter(fmt["inputs"].items()))
    pred_key, pred_fmt = next(iter(fmt["outputs"].items()))
    assert image_key == "image" and len(image_fmt["spatial_shape"]) == 2 and image_fmt["num_channels"] == 1
    labels = {v: int(k) for k, v in pred_fmt["channel_def"].items()}  # MONAI Label: label name -> channel
    assert pred_key == "pred" and sorted(labels.values()) == list(range(len(labels)))
    assert [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1])] == list(FINDINGS)

    root = _classifier_bundle(tmp_path / "reclf_cls", FINDINGS, multi_label=True)
    network, pre, inferer, post, parser = monai_label_pieces(INFERENCE, root)
    assert isinstance(network, ImageClassifier) and network.head.out_features == len(labels)
    assert isinstance(pre, Compose)
    assert all(isinstance(t, MapTransform) and tuple(t.keys) == ("image",) for t in pre.transforms)
    assert parser.get_parsed_content("image_size") == image_fmt["spatial_shape"][0] == 64
    for path in (_pngs(1)[0], DICOM):
        data = pre({"image": path})  # MONAI Label hands the transforms {"image": <file path>}
        image = data["image"]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and tuple(image.shape) == (1, 64, 64)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.05
        # the same resize/pad as training
        np.testing.assert_allclose(image.numpy(), np.asarray(image_transform(64)({"image": path})["image"]), atol=1e-6)
        with torch.no_grad():
            logits = inferer(image[None], network)  # MONAI Label: inputs[None], then outputs[0]
            probs = post({"pred": logits[0]})["pred"]
        assert tuple(probs.shape) == (len(pred_fmt["channel_def"]),)
        assert 0.0 <= float(probs.min()) and float(probs.max()) <= 1.0
        torch.testing.assert_close(torch.as_tensor(probs), torch.sigmoid(logits[0]))  # multi-label: per class

    # a multi-class classifier (its model.json) gets a softmax over its own classes
    root3 = _classifier_bundle(tmp_path / "covid", COVID, multi_label=False)
    network, pre, inferer, post, parser = monai_label_pieces(INFERENCE, root3)
    assert parser.get_parsed_content("class_names") == COVID
    with torch.no_grad():
        probs = torch.as_tensor(post({"pred": inferer(pre({"image": DICOM})["image"][None], network)[0]})["pred"])
    assert tuple(probs.shape) == (3,) and abs(float(probs.sum()) - 1.0) < 1e-5 and float(probs.min()) > 0.0


def test_inference_run_writes_predictions(tmp_path):
    from custom.demo import FINDINGS

    root = _classifier_bundle(tmp_path / "bundle", FINDINGS, multi_label=True)
    files = _pngs(2) + [DICOM]
    run_bundle(INFERENCE, bundle_root=root, input_files=files, device="cpu", batch_size=2)
    with open(os.path.join(root, "eval", "predictions.json"), encoding="utf-8") as f:
        out = json.load(f)
    assert out["n_samples"] == 3 and out["class_names"] == list(FINDINGS) and out["multi_label"] is True
    assert out["source"] == "input_files" and out["checkpoint"] == os.path.join(root, "models", "model.pt")
    # the command line computes exactly what the MONAI Label pieces compute
    network, pre, inferer, post, _ = monai_label_pieces(INFERENCE, root)
    for record, path in zip(out["predictions"], files):
        with torch.no_grad():
            probs = post({"pred": inferer(pre({"image": path})["image"][None], network)[0]})["pred"]
        assert record["image"] == path and list(record["scores"]) == list(FINDINGS)
        np.testing.assert_allclose(list(record["scores"].values()), np.asarray(probs), atol=1e-5)
        assert record["predicted"] == [c for c, p in record["scores"].items() if p >= 0.5]

    # `--multi_label false` arrives as the string 'false': softmax, one predicted class
    run_bundle(INFERENCE, bundle_root=root, input_files=files[:1], device="cpu", multi_label="false")
    with open(os.path.join(root, "eval", "predictions.json"), encoding="utf-8") as f:
        record = json.load(f)["predictions"][0]
    assert abs(sum(record["scores"].values()) - 1.0) < 1e-5 and record["predicted"] in FINDINGS

    # datalist mode, multi-class classifier: the eval_split items, their labels copied
    root3 = _classifier_bundle(tmp_path / "covid", COVID, multi_label=False)
    items = [{"image": os.path.basename(p), "labels": n % 3} for n, p in enumerate(_pngs(3))]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"label_names": COVID, "training": [], "test": items}), encoding="utf-8")
    run_bundle(INFERENCE, bundle_root=root3, datalist=str(datalist), dataset_dir=PNG_DIR, device="cpu")
    with open(os.path.join(root3, "eval", "predictions.json"), encoding="utf-8") as f:
        out = json.load(f)
    assert out["source"] == "datalist" and out["eval_split"] == "test" and out["n_samples"] == 3
    assert [r["labels"] for r in out["predictions"]] == [0, 1, 2]
    for r in out["predictions"]:
        assert r["predicted"] == max(r["scores"], key=r["scores"].get)


def test_inference_without_classifier_says_train_first(tmp_path):
    with pytest.raises(Exception) as err:
        run_bundle(INFERENCE, bundle_root=str(tmp_path), input_files=[DICOM], device="cpu")
    assert "run bundles/reclf_cls/configs/train.yaml first" in exception_text(err.value)


def test_inference_yaml_keys_metadata_and_net_in_out():
    import yaml
    from monai.bundle import verify_net_in_out

    with open(INFERENCE, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    for key in ("network_def", "preprocessing", "postprocessing", "inferer"):
        assert key in config
    with open(os.path.join(CLS_CONFIGS, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "name", "task",
                "description", "authors", "copyright", "data_source", "data_type", "image_classes", "label_classes",
                "pred_classes", "eval_metrics", "intended_use", "references", "required_packages_version"):
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    # MONAI's own check: network_def takes metadata's input (1, 64, 64) and gives its 6 output channels
    verify_net_in_out(net_id="network_def", meta_file=os.path.join(CLS_CONFIGS, "metadata.json"),
                      config_file=INFERENCE, device="cpu")


# ---- checkpoint conversion ----------------------------------------------------------------------------
SMALL_BERT = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "left", "right", "lung",
         "opacity", "heart", "is", "enlarged", "normal", "small", "large", "##s", "the", "of", "a"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> str:
    """A local Hugging Face folder laid out like Bio_ClinicalBERT's (config.json + vocab.txt), with a
    2-layer BERT config."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("text_dir")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertConfig(vocab_size=len(VOCAB), num_hidden_layers=2, **SMALL_BERT).save_pretrained(str(folder))
    return str(folder)


def _bert_source(layers: int, seed: int) -> dict[str, torch.Tensor]:
    """A Hugging Face BertModel state dict with the pooler and the position_ids buffer older
    transformers saved (as GLoRIA's checkpoint holds them)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    state = BertModel(BertConfig(vocab_size=len(VOCAB), num_hidden_layers=layers, **SMALL_BERT)).state_dict()
    state = {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    state["embeddings.position_ids"] = torch.arange(SMALL_BERT["max_position_embeddings"])[None]
    return state


def _resnet_source(name: str, seed: int) -> dict[str, torch.Tensor]:
    """torchvision-layout ResNet tensors (no fc, as GLoRIA / MGCA replace it by Identity), RGB conv1,
    random batch-norm parameters and statistics."""
    from custom.nets.image_encoder import build_resnet

    torch.manual_seed(seed)
    net = build_resnet(name)  # the same names and shapes as torchvision's resnet minus fc
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["conv1.weight"] = 0.05 * torch.randn(64, 3, 7, 7)
    return state


def _batchnorm(prefix: str, n: int, affine: bool = True) -> dict[str, torch.Tensor]:
    out = {prefix + "running_mean": 0.2 * torch.randn(n), prefix + "running_var": 0.5 + torch.rand(n),
           prefix + "num_batches_tracked": torch.tensor(7)}
    if affine:
        out.update({prefix + "weight": 0.5 + torch.rand(n), prefix + "bias": 0.1 * torch.randn(n)})
    return out


def _mlp_head(prefix: str, d_in: int, hidden: int, d_out: int) -> dict[str, torch.Tensor]:
    """MGCA's GlobalEmbedding: Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d(affine=False)."""
    return {prefix + "0.weight": torch.randn(hidden, d_in) / d_in**0.5, prefix + "0.bias": 0.1 * torch.randn(hidden),
            **_batchnorm(prefix + "1.", hidden), prefix + "3.weight": torch.randn(d_out, hidden) / hidden**0.5,
            prefix + "3.bias": 0.1 * torch.randn(d_out), **_batchnorm(prefix + "4.", d_out, affine=False)}


def _gloria_source(encoder: str, seed: int) -> dict[str, torch.Tensor]:
    """GLoRIA's LightningModule layout: gloria.img_encoder.{model,global_embedder,local_embedder},
    gloria.text_encoder.model (a BertModel with pooler); E = the BERT width (32 here)."""
    from custom.nets.image_encoder import RESNET_SPECS

    _, _, local_channels, global_channels = RESNET_SPECS[encoder]
    state = {f"gloria.img_encoder.model.{k}": v for k, v in _resnet_source(encoder, seed).items()}
    state.update({
        "gloria.img_encoder.global_embedder.weight": 0.02 * torch.randn(32, global_channels),
        "gloria.img_encoder.global_embedder.bias": 0.1 * torch.randn(32),
        "gloria.img_encoder.local_embedder.weight": 0.03 * torch.randn(32, local_channels, 1, 1),
    })
    state.update({f"gloria.text_encoder.model.{k}": v for k, v in _bert_source(2, seed + 1).items()})
    return state


@pytest.fixture(scope="module")
def gloria_state() -> dict[str, torch.Tensor]:
    return _gloria_source("resnet50", 1)


@pytest.fixture(scope="module")
def mgca_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state = {f"img_encoder_q.model.{k}": v for k, v in _resnet_source("resnet50", 3).items()}
    state.update(_mlp_head("img_encoder_q.global_embed.head.", 2048, 2048, 16))
    state.update(_mlp_head("img_encoder_q.local_embed.head.", 1024, 64, 16))
    # BLIP's BERT: no token-type table; cross-attention layers (unused in MGCA's text mode); 1 layer
    bert = {k: v for k, v in _bert_source(1, 4).items() if "token_type" not in k and not k.startswith("pooler.")}
    bert["encoder.layer.0.crossattention.self.query.weight"] = torch.randn(32, 32)
    bert["encoder.layer.0.crossattention.self.query.bias"] = torch.randn(32)
    state.update({f"text_encoder_q.model.{k}": v for k, v in bert.items()})
    state.update(_mlp_head("text_encoder_q.global_embed.head.", 32, 2048, 16))
    state.update(_mlp_head("text_encoder_q.local_embed.head.", 32, 64, 16))
    state.update({"prototype_layer.weight": torch.randn(50, 16),
                  "patch_local_atten_layer.in_proj_weight": torch.randn(48, 16)})
    return state


def _save_ckpt(path, state, hparams) -> str:
    torch.save({"epoch": 3, "global_step": 100, "state_dict": state, "hyper_parameters": hparams}, str(path))
    return str(path)


def _check_image_tower(model, src: dict[str, torch.Tensor], prefix: str) -> None:
    """Every ResNet tensor equals the source's; conv1 is the RGB sum rescaled to reclf's input
    normalisation, bn1's running mean absorbs the offset, and the stem computes the same thing."""
    from custom.nets.image_encoder import GRAY_MEAN, GRAY_STD

    ours = model.image_encoder.backbone.state_dict()
    tower = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix)}
    assert set(ours) == set(tower)
    for k, v in tower.items():
        if k not in ("conv1.weight", "bn1.running_mean"):
            assert torch.equal(ours[k], v), k
    summed = tower["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(ours["conv1.weight"], summed * (GRAY_STD / 0.5))
    offset = (GRAY_MEAN - 0.5) / 0.5 * summed.sum(dim=(1, 2, 3))
    torch.testing.assert_close(ours["bn1.running_mean"], tower["bn1.running_mean"] - offset)
    # the source stem on (x - 0.5)/0.5 repeated over RGB vs ours on one channel: equal wherever
    # conv1's 7x7 window lies inside the image (stride 2, padding 3: outputs 2..14 of 16)
    net = model.image_encoder.eval()
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        mine = net.backbone.bn1(net.backbone.conv1((x - net.mean) / net.std))
        ref = F.batch_norm(F.conv2d(((x - 0.5) / 0.5).repeat(1, 3, 1, 1), tower["conv1.weight"], stride=2, padding=3),
                           tower["bn1.running_mean"], tower["bn1.running_var"], tower["bn1.weight"], tower["bn1.bias"])
    torch.testing.assert_close(mine[..., 2:15, 2:15], ref[..., 2:15, 2:15], atol=1e-4, rtol=1e-4)


def _reference_bert(src: dict[str, torch.Tensor], prefix: str, layers: int):
    """The source's text tower as a plain Hugging Face BertModel (pooler dropped)."""
    from transformers import BertConfig, BertModel

    ref = BertModel(BertConfig(vocab_size=len(VOCAB), num_hidden_layers=layers, **SMALL_BERT), add_pooling_layer=False)
    state = {k[len(prefix):]: v for k, v in src.items() if k.startswith(prefix) and ".crossattention." not in k}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    state.setdefault("embeddings.token_type_embeddings.weight", torch.zeros(2, 32))
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def test_convert_gloria(tmp_path, gloria_state, text_dir):
    from custom.convert import convert_checkpoint
    from custom.downstream import ImageItems, encode_images, encode_texts
    from custom.engines.pretrained import load_pretrained

    hparams = {"lr": 5e-5, "model": {"text": {"last_n_layers": 4}}}  # plain containers: weights_only loads it
    ckpt = _save_ckpt(tmp_path / "chexpert_resnet50.ckpt", gloria_state, hparams)
    info = convert_checkpoint("gloria", ckpt, str(tmp_path / "out"), text_dir=text_dir)
    model, tokenizer = load_pretrained(str(tmp_path / "out" / "model.pt"))  # strict, through model.json + text/
    with open(tmp_path / "out" / "model.json", encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["converted_from"]["source"] == "gloria" and meta["converted_from"]["read_with"] == info["read_with"]
    assert "weights_only=True" in info["read_with"] and info["reinitialised"] == {} and info["zero_shot_ready"]
    assert {"image_encoder", "text_encoder", "image_projection", "region_projection"} <= set(info["carried_over"])
    assert info["dropped_source_tensors"] == {"gloria.text_encoder.model.embeddings.position_ids": 1,  # a buffer
                                              "gloria.text_encoder.model.pooler.dense": 2}  # the unused pooler
    assert model.objective == "gloria" and meta["image_encoder"] == "resnet50" and meta["text_pooling"] == "mean"
    assert float(model.global_scale()) == pytest.approx(10.0) and float(model.local_scale()) == pytest.approx(10.0)
    assert float(model.scorer.attention_scale()) == pytest.approx(4.0)
    assert float(model.scorer.pooling_scale()) == pytest.approx(5.0)

    _check_image_tower(model, gloria_state, "gloria.img_encoder.model.")
    g = "gloria.img_encoder."
    torch.manual_seed(0)
    with torch.no_grad():
        feats = torch.rand(4, 2048)  # pooled ReLU features are non-negative
        want = F.linear(feats, gloria_state[g + "global_embedder.weight"], gloria_state[g + "global_embedder.bias"])
        torch.testing.assert_close(model.image_projection(feats), want, atol=1e-5, rtol=1e-4)
        words = 3 * torch.randn(4, 32)
        torch.testing.assert_close(model.text_projection(words), words, atol=2e-5, rtol=1e-5)  # GLoRIA: none
        torch.testing.assert_close(model.word_projection(words), words)
    assert torch.equal(model.region_projection.weight, gloria_state[g + "local_embedder.weight"])
    assert not model.region_projection.bias.any()

    # the BERT computes what the source BERT computes
    ref = _reference_bert(gloria_state, "gloria.text_encoder.model.", layers=2)
    ids = torch.tensor([[2, 6, 7, 8, 18, 3], [2, 5, 7, 3, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        torch.testing.assert_close(model.text_encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   ref(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert len(tokenizer) == len(VOCAB)

    # zero-shot-style encoding runs on real images with both terms
    images = ImageItems([{"image": p} for p in _pngs(2)], image_size=64)
    img = encode_images(model, images, "cpu", local=True)
    prompts = ["left pleural effusion", "no effusion", "the heart is enlarged"]
    txt = encode_texts(model, tokenizer, prompts, "cpu", local=True)
    with torch.no_grad():
        local = model.local_similarity(img, txt)
    assert img["global"].shape == (2, 32) and img["regions"].shape[-1] == 32 and local.shape == (2, 3)
    assert torch.isfinite(local).all() and torch.isfinite(img["global"] @ txt["global"].t()).all()


def test_convert_mgca(tmp_path, mgca_state, text_dir):
    from custom.convert import convert_checkpoint
    from custom.engines.pretrained import load_pretrained

    ckpt = _save_ckpt(tmp_path / "resnet_50.ckpt", mgca_state, {"img_encoder": "resnet_50", "emb_dim": 16})
    info = convert_checkpoint("mgca", ckpt, str(tmp_path / "out"), text_dir=text_dir)
    model, tokenizer = load_pretrained(str(tmp_path / "out" / "model.pt"))
    assert model.objective == "convirt" and model.text_encoder.pooling == "cls" and model.scorer is None
    assert float(model.global_scale()) == pytest.approx(1 / 0.07)
    assert "image_projection" in info["carried_over"] and "text_projection" in info["reinitialised"]
    assert info["zero_shot_ready"] is False and "linear probe" in info["use"]
    dropped = info["dropped_source_tensors"]
    for group in ("img_encoder_q.local_embed.head.N", "text_encoder_q.local_embed.head.N", "prototype_layer",
                  "text_encoder_q.model.encoder.layer.N.crossattention.self.query"):
        assert group in dropped, (group, dropped)
    assert any("num_hidden_layers: 1 from the checkpoint" in n for n in info["text_notes"])  # text_dir says 2
    assert model.text_encoder.model.config.num_hidden_layers == 1

    _check_image_tower(model, mgca_state, "img_encoder_q.model.")
    # the image head: MGCA's Linear-BN-ReLU-Linear-BN (eval) vs the folded ProjectionHead
    head = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.BatchNorm1d(2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 16), torch.nn.BatchNorm1d(16, affine=False)).eval()
    p = "img_encoder_q.global_embed.head."
    head.load_state_dict({k[len(p):]: v for k, v in mgca_state.items() if k.startswith(p)}, strict=True)
    torch.manual_seed(0)
    with torch.no_grad():
        feats = torch.rand(8, 2048)
        want, got = head(feats), model.image_projection(feats)
    assert float((got - want).abs().max()) < 2e-3 * float(want.abs().max())
    assert float(F.cosine_similarity(got, want).min()) > 0.99999

    # MGCA's BLIP-BERT with position_ids = token_type_ids = 0 vs the converted BERT at standard positions
    ref = _reference_bert(mgca_state, "text_encoder_q.model.", layers=1)
    ids = torch.tensor([[2, 6, 7, 8, 18, 3], [2, 5, 7, 3, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, position_ids=torch.zeros_like(ids)).last_hidden_state
        got = model.text_encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want)
    source_words = mgca_state["text_encoder_q.model.embeddings.word_embeddings.weight"]
    assert torch.equal(model.text_encoder.model.embeddings.word_embeddings.weight, source_words)


def test_convert_refuses_pickles_unless_trusted(tmp_path, text_dir, monkeypatch, capsys):
    from custom.__main__ import main
    from custom.convert import CheckpointConversionError, convert_checkpoint, read_lightning_state_dict

    # Lightning pickles its hyper-parameters: an argparse.Namespace is refused by weights_only loading
    # (GLoRIA's ResNet-18 release layout: a smaller file for this test)
    state = _gloria_source("resnet18", 5)
    ckpt = _save_ckpt(tmp_path / "chexpert_resnet18.ckpt", state, argparse.Namespace(lr=5e-5, batch_size=48))
    with pytest.raises(CheckpointConversionError, match="--trust_pickle true") as err:
        convert_checkpoint("gloria", ckpt, str(tmp_path / "refused"), text_dir=text_dir)
    assert "arbitrary code" in str(err.value) and not os.path.exists(tmp_path / "refused" / "model.pt")
    with pytest.raises(CheckpointConversionError, match="--text_dir"):
        convert_checkpoint("gloria", ckpt, str(tmp_path / "no_text"), trust_pickle=True)
    with pytest.raises(CheckpointConversionError, match="convert-checkpoint gloria"):
        convert_checkpoint("mgca", ckpt, str(tmp_path / "wrong"), text_dir=text_dir, trust_pickle=True)

    # the command line, in-process (fire hands `--trust_pickle true` over as the string 'true')
    out = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["custom", "convert-checkpoint", "gloria", ckpt, "--out", str(out),
                                      "--text_dir", text_dir, "--trust_pickle", "true"])
    main()
    printed = capsys.readouterr().out
    assert "carried over" in printed and "image_projection" in printed and "--pretrained_ckpt" in printed
    with open(out / "model.json", encoding="utf-8") as f:
        meta = json.load(f)
    assert "restricted unpickler" in meta["converted_from"]["read_with"] and meta["image_encoder"] == "resnet18"
    with pytest.raises(SystemExit, match="--overwrite true"):  # never replaces a checkpoint silently
        main()

    # a hyper-parameter class whose module is not installed (GLoRIA pickles an OmegaConf config)
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "reclf_fake_hparams.py").write_text(
        "class Config:\n    def __init__(self, **kw):\n        self.__dict__.update(kw)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(module_dir))
    import reclf_fake_hparams

    weights = {"gloria.img_encoder.global_embedder.bias": torch.arange(3.0)}
    hparams = reclf_fake_hparams.Config(lr=1e-4, nested={"a": [1, 2]})
    ckpt2 = _save_ckpt(tmp_path / "omegaconf_like.ckpt", weights, hparams)
    monkeypatch.delitem(sys.modules, "reclf_fake_hparams")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(module_dir)])
    with pytest.raises(CheckpointConversionError, match="--trust_pickle"):
        read_lightning_state_dict(ckpt2)
    tensors, info = read_lightning_state_dict(ckpt2, trust_pickle="true")
    assert info["placeholders"] == ["reclf_fake_hparams.Config"]
    assert torch.equal(tensors["gloria.img_encoder.global_embedder.bias"], torch.arange(3.0))
