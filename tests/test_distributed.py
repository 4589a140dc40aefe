"""Two gloo processes on CPU against one process on the concatenated batch, in float64.

- the gathered global InfoNCE (custom.distributed.gather_with_grad): the rank losses average
  to the full-batch loss and each rank's feature gradient, divided by the world size (DDP
  averages), is the full-batch gradient of its slice; duplicate reports across ranks are
  positives of each other;
- a DDP step of the pretraining model (ConVIRT: global term only; RECLF: + the per-rank local
  term) gives the same gradients and, after AdamW, the same parameters as one process.

BatchNorm normalises with each process's own batch statistics (no SyncBatchNorm), so the
single-process reference encodes each rank's half separately and contrasts the concatenated
features: with full-batch statistics the two runs differ by design, not by error. Dropout is
off in the tiny BERT (its masks are per process). The local RECLF term is per rank (DESIGN §2),
so the reference averages the two halves' local losses.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

WORLD = 2
N = 8  # the full batch; N / WORLD pairs per rank
REPORTS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion.",
    "Right lower lobe opacity, likely pneumonia.",
    "Mild cardiomegaly without edema.",
    "Left apical pneumothorax.",
    "No acute cardiopulmonary process.",  # = report 0, on the other rank: a cross-rank positive
    "Right pleural effusion and left basal atelectasis.",
    "Nodule in the left upper zone.",
]
TEXT_CONFIG = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
OBJECTIVES = ("convirt", "reclf")
TOL = {"rtol": 1e-7, "atol": 1e-10}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tokenizer():
    from custom.text import train_wordpiece

    return train_wordpiece(REPORTS * 3, vocab_size=100)


def _model(objective: str, tokenizer):
    from custom.engines.pretrained import build_reclf_model

    torch.manual_seed(0)  # the same initial weights in every process
    return build_reclf_model(tokenizer, "resnet18", text_config=TEXT_CONFIG, objective=objective, embed_dim=16,
                             local_dim=16, position_dim=8, match_dim=8).double()


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    from custom.text import encode_reports, report_key

    tokens = {k: torch.as_tensor(v) for k, v in encode_reports(tokenizer, REPORTS).items()}
    images = torch.rand(N, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return {"image": images, **tokens, "report_id": torch.tensor([report_key(r) for r in REPORTS])}


def _features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 6) unit image and text features, a scale, float64."""
    gen = torch.Generator().manual_seed(3)
    image = torch.nn.functional.normalize(torch.randn(N, 6, generator=gen, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(N, 6, generator=gen, dtype=torch.float64), dim=-1)
    return image, text, torch.tensor(4.0, dtype=torch.float64)


def _inputs(batch: dict, part: slice) -> tuple:
    return tuple(batch[k][part] for k in ("image", "input_ids", "attention_mask", "word_ids", "report_id"))


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from custom.losses import GlobalContrastiveLoss, PretrainLoss
    from custom.optim import build_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        n = N // WORLD
        part = slice(rank * n, (rank + 1) * n)
        image, text, scale = _features()
        from custom.text import report_key

        ids = torch.tensor([report_key(r) for r in REPORTS])
        local_image, local_text = image[part].clone().requires_grad_(), text[part].clone().requires_grad_()
        loss = GlobalContrastiveLoss(0.75)(local_image, local_text, scale, ids[part])
        loss.backward()
        result = {"loss": loss.detach(), "image_grad": local_image.grad, "text_grad": local_text.grad}

        tokenizer = _tokenizer()
        batch = _batch(tokenizer)
        for objective in OBJECTIVES:
            model = _model(objective, tokenizer)
            ddp = DistributedDataParallel(model)
            optimizer = build_optimizer(ddp, lr=1.0e-3)
            *inputs, report_ids = _inputs(batch, part)
            losses = PretrainLoss()(ddp(*inputs, report_ids), report_ids)
            losses["loss"].backward()  # DDP all-reduces (averages) the gradients
            grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
            optimizer.step()
            result[objective] = {"loss": losses["loss"].detach(), "grads": grads,
                                 "params": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    import torch.multiprocessing as mp

    out = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def test_gathered_global_loss_and_gradients_equal_the_full_batch(ranks) -> None:
    from custom.losses import GlobalContrastiveLoss
    from custom.text import report_key

    image, text, scale = _features()
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    ids = torch.tensor([report_key(r) for r in REPORTS])
    full = GlobalContrastiveLoss(0.75)(image, text, scale, ids)
    full.backward()
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, full.detach(), **TOL)
    # each rank's gradient w.r.t. its slice, averaged as DDP averages: the full-batch gradient
    torch.testing.assert_close(torch.cat([r["image_grad"] for r in ranks]) / WORLD, image.grad, **TOL)
    torch.testing.assert_close(torch.cat([r["text_grad"] for r in ranks]) / WORLD, text.grad, **TOL)
    # the test can fail: a gather that keeps only the local slice's graph (the other ranks' slices
    # as constants) gives rank 0 the gradient of its own loss only, which is not the full one
    from custom.losses import multi_positive_targets, soft_cross_entropy

    n = N // WORLD
    own = image[:n].detach().clone().requires_grad_()
    all_image = torch.cat([own, image[n:].detach()])
    targets = multi_positive_targets(ids[:n], ids)
    loss0 = 0.75 * soft_cross_entropy(scale * own @ text.detach().t(), targets) + 0.25 * soft_cross_entropy(
        scale * text[:n].detach() @ all_image.t(), targets)
    local_only = torch.autograd.grad(loss0, own)[0]
    assert not torch.allclose(local_only / WORLD, image.grad[:n], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_ddp_step_equals_one_process_on_the_full_batch(ranks, objective: str) -> None:
    from custom.losses import PretrainLoss
    from custom.optim import build_optimizer

    tokenizer = _tokenizer()
    batch = _batch(tokenizer)
    model = _model(objective, tokenizer)
    model.train()
    optimizer = build_optimizer(model, lr=1.0e-3)
    loss_fn = PretrainLoss()
    n = N // WORLD
    halves = [slice(r * n, (r + 1) * n) for r in range(WORLD)]
    # per-rank encoding (BatchNorm statistics per process), then the global term over all pairs
    feats = [model.encode(*_inputs(batch, h)[:4]) for h in halves]
    image = torch.cat([f["image_global"] for f in feats])
    text = torch.cat([f["text_global"] for f in feats])
    total = loss_fn.global_weight * loss_fn.global_loss(image, text, model.global_scale(), batch["report_id"])
    if model.scorer is not None:  # the local term is per rank: the mean of the two halves' losses
        local = [loss_fn.local_loss(model.contrast(f, batch["report_id"][h]), batch["report_id"][h])
                 for f, h in zip(feats, halves)]
        total = total + loss_fn.local_weight * sum(local) / WORLD
    total.backward()
    # the rank losses average to the single-process loss
    torch.testing.assert_close(sum(r[objective]["loss"] for r in ranks) / WORLD, total.detach(), **TOL)
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    for r in ranks:
        assert set(r[objective]["grads"]) == set(grads)
        for k, g in grads.items():
            torch.testing.assert_close(r[objective]["grads"][k], g, **TOL, msg=lambda m, k=k: f"grad {k}: {m}")
    optimizer.step()
    params = model.state_dict()
    for k, v in ranks[0][objective]["params"].items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # running statistics: per process (rank 0's half), not the parameters of a step
        torch.testing.assert_close(v, params[k], **TOL, msg=lambda m, k=k: f"param {k}: {m}")
    # both ranks hold the same parameters after the step
    for k, v in ranks[1][objective]["params"].items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(v, ranks[0][objective]["params"][k], rtol=0, atol=0)
