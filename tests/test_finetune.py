"""Fine-tuning machinery: per-part parameter groups, freezing, the text read-out, the token limit,
and gradient accumulation that equals the un-accumulated large batch."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from custom.accumulation import accumulated_backward
from custom.losses import PretrainLoss
from custom.engines.pretrained import build_reclf_model
from custom.optim import PRETRAINED_LR, build_optimizer, parameter_groups, resolve_part_settings
from custom.text import encode_reports, token_limit, train_wordpiece

REPORTS = [
    "small left pleural effusion. no pneumothorax.",
    "right upper lobe opacity, likely pneumonia.",
    "heart size is normal. lungs are clear.",
    "cardiomegaly with mild pulmonary edema.",
    "nodule in the left lower zone.",
    "no acute cardiopulmonary process.",
    "bilateral basal atelectasis and small effusions.",
    "right pneumothorax, small; no effusion.",
]
SMALL = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(REPORTS, vocab_size=300, min_frequency=1)


def tiny_model(tokenizer, objective: str = "reclf", **kwargs):
    torch.manual_seed(0)
    return build_reclf_model(tokenizer, image_encoder="resnet18", text_config=SMALL, objective=objective,
                             embed_dim=16, local_dim=16, match_dim=8, **kwargs)


def tiny_batch(tokenizer, n: int = 8, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    enc = encode_reports(tokenizer, [REPORTS[i % len(REPORTS)] for i in range(n)], max_length=32)
    batch = {k: torch.from_numpy(v) for k, v in enc.items()}
    batch["image"] = torch.rand(n, 1, size, size, generator=gen)
    batch["report_id"] = torch.arange(n)
    return batch


def group_of(optimizer, name: str) -> dict:
    for group in optimizer.param_groups:
        if name in group["param_names"]:
            return group
    raise KeyError(name)


# ---- parameter groups ----------------------------------------------------------------------


def test_each_tensor_gets_its_parts_lr_and_decay(tokenizer):
    model = tiny_model(tokenizer)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, image_lr=3e-4, text_lr=2e-5, scale_lr=1e-2,
                          image_weight_decay=0.01, text_weight_decay=0.02)
    expect = {
        "image_encoder.backbone.conv1.weight": (3e-4, 0.01),
        "image_encoder.backbone.bn1.weight": (3e-4, 0.0),  # norm: no decay
        "text_encoder.model.embeddings.word_embeddings.weight": (2e-5, 0.02),
        "text_encoder.model.encoder.layer.0.attention.self.query.bias": (2e-5, 0.0),  # bias
        "text_encoder.model.embeddings.LayerNorm.weight": (2e-5, 0.0),
        "image_projection.net.0.weight": (1e-3, 0.05),
        "image_projection.net.0.bias": (1e-3, 0.0),
        "scorer.match_feature.0.weight": (1e-3, 0.05),
        "position_code.grid": (1e-3, 0.05),
        "global_scale.log_value": (1e-2, 0.0),  # scales: own lr, never decayed
        "scorer.attention_scale.log_value": (1e-2, 0.0),
    }
    for name, (lr, wd) in expect.items():
        group = group_of(opt, name)
        assert (group["lr"], group["weight_decay"]) == (lr, wd), (name, group["name"])
    # every trainable tensor is in exactly one group
    names = [n for g in opt.param_groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(names) == len(set(names))


def test_auto_lr_depends_on_where_a_tower_starts(tokenizer):
    model = tiny_model(tokenizer)
    auto = resolve_part_settings(model, lr=1e-3, weight_decay=1e-4)
    assert auto["image"]["lr"] == auto["text"]["lr"] == 1e-3  # random init: trains with the heads
    model.pretrained_parts = {"image": True, "text": True}
    auto = resolve_part_settings(model, lr=1e-3, weight_decay=1e-4)
    assert auto["image"]["lr"] == PRETRAINED_LR["image"] and auto["text"]["lr"] == PRETRAINED_LR["text"]
    assert auto["heads"]["lr"] == auto["scales"]["lr"] == 1e-3 and auto["scales"]["weight_decay"] == 0.0
    # what a command line hands over: strings
    assert resolve_part_settings(model, "1e-3", "0", text_lr="5e-5")["text"]["lr"] == 5e-5
    with pytest.raises(ValueError, match="text lr"):
        resolve_part_settings(model, 1e-3, 1e-4, text_lr=-1)


def test_pretrained_text_folder_marks_the_text_tower_pretrained(tmp_path, tokenizer):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SMALL)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = tiny_model(tokenizer, text_encoder=str(folder))
    assert model.pretrained_parts == {"image": False, "text": True}


# ---- freezing ------------------------------------------------------------------------------


def test_frozen_tensors_are_unchanged_after_steps(tokenizer):
    model = tiny_model(tokenizer, freeze_text_layers=2, freeze_image="layer1")
    frozen_prefixes = ("text_encoder.model.embeddings.", "text_encoder.model.encoder.layer.0.",
                       "text_encoder.model.encoder.layer.1.", "image_encoder.backbone.conv1.",
                       "image_encoder.backbone.bn1.", "image_encoder.backbone.layer1.")
    before = copy.deepcopy(model.state_dict())  # parameters and batch-norm buffers
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    assert not any(n.startswith(frozen_prefixes) for g in opt.param_groups for n in g["param_names"])
    loss_fn = PretrainLoss()
    model.train()
    for seed in range(2):
        batch = tiny_batch(tokenizer, seed=seed)
        out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["word_ids"], batch["report_id"])
        opt.zero_grad()
        loss_fn(out, batch["report_id"])["loss"].backward()
        opt.step()
    after = model.state_dict()
    for name, value in before.items():
        if not value.is_floating_point():
            continue
        same = torch.equal(value, after[name])
        if name.startswith(frozen_prefixes):
            assert same, f"frozen {name} changed"
    # the rest trains: the next layer of each tower, and BN statistics of the unfrozen stages
    for name in ("text_encoder.model.encoder.layer.2.attention.self.query.weight",
                 "image_encoder.backbone.layer2.0.conv1.weight", "image_encoder.backbone.layer2.0.bn1.running_mean"):
        assert not torch.equal(before[name], after[name]), name
    # frozen parts stay in eval mode through train()
    assert not model.image_encoder.backbone.layer1.training and model.image_encoder.backbone.layer2.training
    assert not model.text_encoder.model.encoder.layer[1].training


def test_freeze_all_and_bad_values(tokenizer):
    model = tiny_model(tokenizer, freeze_text_layers="all", freeze_image="all")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert "text_encoder" not in trainable and "image_encoder" not in trainable and "text_projection" in trainable
    with pytest.raises(ValueError, match="has 3 layers"):
        tiny_model(tokenizer, freeze_text_layers=4)
    with pytest.raises(ValueError, match="freeze_image: expected none, stem"):
        tiny_model(tokenizer, freeze_image="layer5")


# ---- read-out and token limit ------------------------------------------------------------------


def test_text_readout_sums_the_last_layers(tokenizer):
    model = tiny_model(tokenizer, text_readout="sum", text_readout_layers=2).eval()
    batch = tiny_batch(tokenizer, n=2)
    with torch.no_grad():
        states = model.text_encoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          output_hidden_states=True).hidden_states
        got = model.text_encoder.token_states(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, states[-1] + states[-2])
    assert model.build_config["text_readout"] == "sum" and model.build_config["text_readout_layers"] == 2
    with pytest.raises(ValueError, match="text_readout_layers must be in 1..3"):
        tiny_model(tokenizer, text_readout="mean", text_readout_layers=5)


def test_max_length_is_capped_by_the_tokenizer_limit(tokenizer, caplog):
    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = 16
    with caplog.at_level(logging.WARNING, logger="reclf"):
        assert token_limit(tok, 128) == 16
    assert "exceeds the text model's limit of 16" in caplog.text
    enc = encode_reports(tok, [" ".join(["effusion"] * 100)], max_length=512)
    assert enc["input_ids"].shape[1] == 16
    with pytest.raises(ValueError, match="at least 3 tokens"):
        token_limit(tok, 0)


# ---- gradient accumulation ---------------------------------------------------------------------


@pytest.mark.parametrize("objective,negatives", [("reclf", "all"), ("gloria", "all"), ("convirt", "all"),
                                                  ("reclf", "topk")])
def test_accumulated_gradient_equals_the_full_batch(tokenizer, objective, negatives):
    """4 micro-batches of 2 give the gradient of one batch of 8 (eval mode: batch-norm uses its
    running statistics, so only the accumulation can make a difference)."""
    model = tiny_model(tokenizer, objective, local_negatives=negatives, topk=3).double().eval()
    batch = tiny_batch(tokenizer, n=8)
    batch["image"] = batch["image"].double()
    loss_fn = PretrainLoss()
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["word_ids"], batch["report_id"])
    full = loss_fn(out, batch["report_id"])
    full["loss"].backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    acc = accumulated_backward(model, batch, 2, loss_fn, torch.device("cpu"))
    torch.testing.assert_close(acc["loss"], full["loss"].detach(), rtol=1e-10, atol=1e-12)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-7, atol=1e-10, msg=name)


def test_accumulation_updates_batchnorm_statistics_once_and_replays_dropout(tokenizer):
    """In train mode: the running statistics after an accumulated step equal those of encoding
    the micro-batches once each, and dropout masks are the same in both passes (the cached loss
    equals the loss recomputed from the second pass's features)."""
    model = tiny_model(tokenizer).train()
    assert model.text_encoder.model.config.hidden_dropout_prob > 0
    batch = tiny_batch(tokenizer, n=8)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for s in range(0, 8, 4):
            reference.encode(*(batch[k][s:s + 4] for k in ("image", "input_ids", "attention_mask", "word_ids")))
    seen = []
    encode = model.encode

    def recording_encode(*args):
        out = encode(*args)
        seen.append(out["text_global"].detach().clone())
        return out

    model.encode = recording_encode
    accumulated_backward(model, batch, 4, PretrainLoss(), torch.device("cpu"))
    bn = "image_encoder.backbone.layer3.1.bn2.running_var"
    torch.testing.assert_close(model.state_dict()[bn], reference.state_dict()[bn])
    assert int(model.state_dict()["image_encoder.backbone.bn1.num_batches_tracked"]) == 2
    # passes: [first 1, first 2, second 1, second 2]; dropout is on, yet each pair is equal
    assert len(seen) == 4
    torch.testing.assert_close(seen[0], seen[2], rtol=0, atol=0)
    torch.testing.assert_close(seen[1], seen[3], rtol=0, atol=0)
    assert not torch.equal(seen[0], reference.encode(*(batch[k][:4] for k in
                                                       ("image", "input_ids", "attention_mask", "word_ids")))["text_global"])
