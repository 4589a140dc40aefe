"""User-supplied ResNet weights: torchvision files load strictly, other layouts convert or are refused.

Real tensors throughout: the sources are our own ``build_resnet`` (torchvision's names and shapes)
with random batch-norm statistics, renamed into the layouts of Lightning, DataParallel, timm and
MONAI files, and MONAI's own ``resnet18`` for what MONAI really writes.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from monai.networks.nets import resnet18 as monai_resnet18
from safetensors.torch import save_file

from custom.nets.image_encoder import ImageEncoder, build_resnet
from custom.engines.image_weights import load_torchvision_weights, read_resnet_state_dict


def _torchvision_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision-format ResNet state dict: RGB conv1, an ImageNet-sized fc, random BN stats."""
    torch.manual_seed(seed)
    net = build_resnet(name)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["conv1.weight"] = 0.05 * torch.randn(64, 3, 7, 7)
    width = state["layer4.1.bn2.weight"].numel() if name == "resnet18" else 2048
    state.update({"fc.weight": 0.01 * torch.randn(1000, width), "fc.bias": torch.zeros(1000)})
    return state


@pytest.fixture(scope="module")
def tv18() -> dict[str, torch.Tensor]:
    return _torchvision_state("resnet18", 0)


@pytest.fixture(scope="module")
def expected18() -> dict[str, torch.Size]:
    return {k: v.shape for k, v in build_resnet("resnet18").state_dict().items()}


def _encoder(name: str, path: str) -> ImageEncoder:
    """An encoder with a user's weights file loaded the way build_reclf_model loads image_weights."""
    encoder = ImageEncoder(name)
    load_torchvision_weights(encoder.backbone, path)
    return encoder


def _assert_loaded(encoder: ImageEncoder, source: dict[str, torch.Tensor]) -> None:
    """Every encoder tensor equals the source's; conv1 equals the source's RGB sum."""
    loaded = encoder.backbone.state_dict()
    assert torch.equal(loaded["conv1.weight"], source["conv1.weight"].sum(dim=1, keepdim=True))
    for key, value in loaded.items():
        if key != "conv1.weight":
            assert torch.equal(value, source[key]), key


def _refusal(path, expected) -> str:
    with pytest.raises(ValueError) as info:
        read_resnet_state_dict(str(path), expected)
    message = str(info.value)
    assert str(path) in message
    return message


def test_torchvision_state_dict_loads_strictly(tv18, tmp_path, caplog):
    path = tmp_path / "resnet18.pth"
    torch.save(tv18, path)
    with caplog.at_level(logging.INFO, logger="reclf"):
        encoder = _encoder("resnet18", str(path))
    _assert_loaded(encoder, tv18)
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "reclf")
    assert "fc dropped" in logged and "conv1 summed over RGB" in logged and "prefix" not in logged


def test_dataparallel_prefix_and_old_file_without_counters(tv18, expected18, tmp_path):
    # DataParallel names and, as in torchvision's first ImageNet files, no num_batches_tracked
    old = {"module." + k: v for k, v in tv18.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "dp.pt"
    torch.save(old, path)
    state, description = read_resnet_state_dict(str(path), expected18)
    assert set(state) == set(expected18)
    assert torch.equal(state["layer3.0.bn1.running_var"], tv18["layer3.0.bn1.running_var"])
    assert int(state["bn1.num_batches_tracked"]) == 0
    assert "prefix 'module.' stripped" in description and "num_batches_tracked set to 0" in description
    _assert_loaded(_encoder("resnet18", str(path)), tv18)  # tv18's counters are 0 too


def test_lightning_checkpoint_converts(tv18, expected18, tmp_path):
    weights = {"model.encoder." + k: v for k, v in tv18.items()}
    weights["model.text.embeddings.weight"] = torch.randn(10, 4)  # another tower: left alone
    ckpt = {"state_dict": weights, "epoch": 3, "global_step": 120,
            "hyper_parameters": {"lr": 1e-4, "image_encoder": "resnet18"}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    state, description = read_resnet_state_dict(str(path), expected18)
    assert description.startswith("Lightning checkpoint, prefix 'model.encoder.' stripped, fc dropped, conv1 summed")
    assert "1 other tensors ignored" in description and "model.text.embeddings.weight" in description
    _assert_loaded(_encoder("resnet18", str(path)), tv18)


def test_safetensors_file_and_hugging_face_folder(tv18, expected18, tmp_path):
    # timm's plain resnet (resnet18.a1_in1k, resnet50.tv_in1k) uses torchvision's names
    tensors = {k: v.contiguous() for k, v in tv18.items()}
    file = tmp_path / "resnet18.safetensors"
    save_file(tensors, str(file))
    state, description = read_resnet_state_dict(str(file), expected18)
    assert description.startswith("safetensors file") and "fc.weight" not in state
    assert torch.equal(state["layer2.1.bn2.running_mean"], tv18["layer2.1.bn2.running_mean"])
    folder = tmp_path / "timm-resnet18"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    # both weight files, as timm Hub folders ship: the safetensors one is read
    torch.save({k: torch.zeros_like(v) for k, v in tv18.items()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
    _assert_loaded(_encoder("resnet18", str(folder)), tv18)
    _, description = read_resnet_state_dict(str(folder), expected18)
    assert "Hugging Face folder (model.safetensors, architecture 'resnet18')" in description

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "model.safetensors" in _refusal(empty, expected18)


def test_query_and_momentum_encoders_are_ambiguous(tv18, expected18, tmp_path):
    both = {f"img_encoder_{q}.model.{k}": v for q in ("q", "k") for k, v in tv18.items()}
    path = tmp_path / "moco.ckpt"
    torch.save({"state_dict": both, "global_step": 5}, path)
    message = _refusal(path, expected18)
    assert "2 complete ResNets" in message and "ambiguous" in message
    assert "'img_encoder_k.model.'" in message and "'img_encoder_q.model.'" in message


def test_resnet18_file_for_a_resnet50_encoder_is_refused(tv18, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(tv18, path)
    expected50 = {k: v.shape for k, v in build_resnet("resnet50").state_dict().items()}
    message = _refusal(path, expected50)
    assert "missing" in message and "'layer1.0.conv3.weight'" in message
    assert "layer1.0.conv1.weight: file [64, 64, 3, 3], expected [64, 64, 1, 1]" in message
    assert "holds a resnet18 while the encoder is a resnet50" in message
    assert "'layer4.2.bn3.running_var'" in message and "image_encoder" in message
    with pytest.raises(ValueError, match="resnet18 while the encoder is a resnet50"):
        _encoder("resnet50", str(path))


def test_resnet50_round_trip_under_a_prefix(tmp_path):
    source = _torchvision_state("resnet50", 1)
    path = tmp_path / "gloria_like.ckpt"
    torch.save({"state_dict": {"gloria.img_encoder.model." + k: v for k, v in source.items()}}, path)
    encoder = _encoder("resnet50", str(path))
    _assert_loaded(encoder, source)
    out = encoder.eval()(torch.rand(1, 1, 64, 64))
    assert out["global"].shape == (1, 2048) and out["local"].shape == (1, 1024, 4, 4)


def test_monai_resnets(expected18, tmp_path):
    torch.manual_seed(2)
    default = monai_resnet18(spatial_dims=2, n_input_channels=3).state_dict()
    assert "layer2.0.downsample.0.bias" in default  # MONAI's bias_downsample=True, checked, not assumed
    torch.save(default, tmp_path / "monai_default.pt")
    message = _refusal(tmp_path / "monai_default.pt", expected18)
    assert "MONAI ResNet with a bias on the downsample convolution" in message
    assert "'layer2.0.downsample.0.bias'" in message

    shortcut_a = monai_resnet18(spatial_dims=2, n_input_channels=3, shortcut_type="A").state_dict()
    torch.save(shortcut_a, tmp_path / "monai_a.pt")
    assert "shortcut_type='A'" in _refusal(tmp_path / "monai_a.pt", expected18)

    compatible = monai_resnet18(spatial_dims=2, n_input_channels=3, shortcut_type="B", bias_downsample=False,
                                conv1_t_stride=2).state_dict()
    torch.save(compatible, tmp_path / "monai_tv.pt")
    _assert_loaded(_encoder("resnet18", str(tmp_path / "monai_tv.pt")), compatible)


def test_timm_deep_stem_and_avg_down_are_refused(tv18, expected18, tmp_path):
    """timm's resnet18d: a three-conv stem conv1.{0,1,3,4,6} and avg-pool shortcuts downsample.{1,2}."""
    state = {k: v for k, v in tv18.items() if not k.startswith("conv1.") and ".downsample." not in k}
    stem = {"conv1.0.weight": torch.randn(32, 3, 3, 3), "conv1.1.weight": torch.ones(32),
            "conv1.3.weight": torch.randn(32, 32, 3, 3), "conv1.4.weight": torch.ones(32),
            "conv1.6.weight": torch.randn(64, 32, 3, 3)}
    shortcut = {k.replace(".downsample.1.", ".downsample.2.").replace(".downsample.0.", ".downsample.1."): v
                for k, v in tv18.items() if ".downsample." in k}
    path = tmp_path / "resnet18d.pth"
    torch.save({**stem, **state, **shortcut}, path)
    message = _refusal(path, expected18)
    assert "deep stem (conv1.0/conv1.1...) is not the torchvision ResNet stem" in message
    assert "average pooling" in message and "'conv1.weight'" in message


def test_pickled_module_is_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(build_resnet("resnet18"), path)
    with pytest.raises(ValueError) as info:
        _encoder("resnet18", str(path))
    message = str(info.value)
    assert str(path) in message and "pickled Python objects" in message
    assert "torch.save(model.state_dict(), path)" in message and "weights_only=True" in message
    assert "weights_only=False" not in message


@pytest.mark.parametrize("content, found", [({}, "an empty dict"), ([1, 2], "a list of 2 items"),
                                            ({"epoch": 3, "teacher": {"lr": 1}}, "keys 'epoch', 'teacher'")])
def test_not_a_state_dict(content, found, expected18, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    message = _refusal(path, expected18)
    assert "is not a state dict" in message and found in message


def test_missing_file_and_unknown_suffix(expected18, tmp_path):
    assert "no such file" in _refusal(tmp_path / "absent.pth", expected18)
    (tmp_path / "weights.npz").write_bytes(b"\0")
    assert "unknown file type" in _refusal(tmp_path / "weights.npz", expected18)


def test_pretraining_network_loads_image_weights(tv18, tmp_path):
    """`image_weights` of reclf_pretrain/configs/train.yaml: build_reclf_model loads the file into the
    image tower (the network constructors themselves take no paths)."""
    from custom.engines.pretrained import build_reclf_model
    from custom.text import prepare_tokenizer

    path = tmp_path / "resnet18.pth"
    torch.save(tv18, path)
    tokenizer = prepare_tokenizer("", ["small left pleural effusion", "no acute finding"], str(tmp_path / "text"))
    model = build_reclf_model(tokenizer, image_weights=str(path))
    _assert_loaded(model.image_encoder, tv18)
    assert model.pretrained_parts["image"] is True
    fresh = build_reclf_model(tokenizer)
    assert not torch.equal(fresh.image_encoder.backbone.conv1.weight, model.image_encoder.backbone.conv1.weight)
