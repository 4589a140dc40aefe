"""Downstream networks on a truncated pretraining tower (``image_global_layer: layer2``): the
classifier and the U-Net stop at the deepest stage the checkpoint trained, equal a plain
reference built from the backbone's stages, and rebuild from their ``model.json``."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def layer2_ckpt(tmp_path_factory) -> str:
    from benchmarks.throughput import make_tokenizer
    from custom.engines.pretrained import build_reclf_model, save_pretrained

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = build_reclf_model(tokenizer, image_local_layer="layer1", image_global_layer="layer2")
    out = tmp_path_factory.mktemp("layer2_pretrain")
    save_pretrained(model, tokenizer, str(out))
    return str(out / "model.pt")


def tower_state(ckpt: str) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}


def reference_stages(encoder, images: torch.Tensor) -> list[torch.Tensor]:
    """stem, layer1, layer2 of ``encoder``'s backbone, by hand."""
    net = encoder.backbone
    x = (images - encoder.mean) / encoder.std
    stem = torch.relu(net.bn1(net.conv1(x)))
    l1 = net.layer1(net.maxpool(stem))
    return [stem, l1, net.layer2(l1)]


def test_classifier_stops_at_the_pretrained_stage(layer2_ckpt):
    from custom.engines.checkpoints import build_classifier, network_from_meta

    net = build_classifier(6, pretrained_ckpt=layer2_ckpt).eval()
    assert net.encoder_depth == "layer2" and net.head.in_features == 128  # resnet18 layer2 width
    mine, tower = net.encoder.state_dict(), tower_state(layer2_ckpt)
    assert set(mine) == set(tower) and all(torch.equal(mine[k], v) for k, v in tower.items())
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expected = F.adaptive_avg_pool2d(reference_stages(net.encoder, images)[-1], 1).flatten(1)
        torch.testing.assert_close(net.features(images), expected)
        # the untrained stages are not run: scrambling them changes nothing
        for p in list(net.encoder.backbone.layer3.parameters()) + list(net.encoder.backbone.layer4.parameters()):
            p.normal_()
        torch.testing.assert_close(net.features(images), expected)
    rebuilt = network_from_meta({"class_names": list("abcdef"), "image_encoder": "resnet18", "encoder_depth": "layer2"})
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images), net(images))
    with pytest.raises(ValueError, match=r"image_global_layer='layer2'.*encoder_depth='layer4'"):
        build_classifier(6, pretrained_ckpt=layer2_ckpt, encoder_depth="layer4")
    with pytest.raises(ValueError, match="encoder_depth: expected one of"):
        build_classifier(6, encoder_depth="layer5")


def test_segmenter_stops_at_the_pretrained_stage_and_rebuilds(layer2_ckpt, tmp_path):
    from custom.checkpoints import read_meta
    from custom.engines.checkpoints import build_segmenter, network_from_meta
    from custom.engines.tasks.segmentation.training import save_segmenter

    torch.manual_seed(0)
    net = build_segmenter(pretrained_ckpt=layer2_ckpt).eval()
    assert net.encoder_depth == "layer2" and len(net.decoder) == 2  # layer2 -> layer1 -> stem
    images = torch.rand(2, 1, 40, 40)  # a multiple of 8 (layer2's stride), not of 32
    with torch.no_grad():
        stem, l1, l2 = reference_stages(net.encoder, images)
        x = net.decoder[1](net.decoder[0](l2, l1), stem)
        expected = F.interpolate(net.head(x), size=(40, 40), mode="bilinear", align_corners=False)
        torch.testing.assert_close(net(images), expected)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 36, 36))
    path = str(tmp_path / "model.pt")
    save_segmenter(net, path, {"image_size": 40})
    meta = read_meta(path)
    assert meta["encoder_depth"] == "layer2"
    rebuilt = network_from_meta(meta)
    rebuilt.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images), expected)
