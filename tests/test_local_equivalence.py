"""The batched local scorers equal plain per-pair loops (benchmarks/reference.py), values and
gradients, in float64; top-K candidates; relation-module switches and gradients at model level.

The reference drops padded words instead of masking them, and padded word slots here hold random
garbage, so any leak through the masks of the batched code shows up as a mismatch.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from benchmarks.reference import gloria_loop_loss, gloria_pair_score, reclf_pair_score, score_matrix_loop
from custom.losses import LocalContrastiveLoss
from custom.nets.scorers import GloriaPoolingScorer, LocalScorer, RelationScorer

DT = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}
D, DP, DM = 12, 6, 8  # local_dim, position_dim, match_dim


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread. With several, every op pays an OpenMP barrier, which
    costs milliseconds per op when the cores are shared (measured: 4x slower tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(b: int = 4, r: int = 9, t: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float64 regions (b, r, D), positions (r, DP), words (b, t, D) and a word mask (b, t)
    with a different length per report (one full, one of a single word), garbage in the padding."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 3, 1, 5, 6, 2][:b])
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return {
        "regions": torch.randn(b, r, D, generator=gen, dtype=DT).requires_grad_(),
        "positions": torch.randn(r, DP, generator=gen, dtype=DT).requires_grad_(),
        "words": torch.randn(b, t, D, generator=gen, dtype=DT).requires_grad_(),
        "mask": mask,
    }


def randomise(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Scramble every parameter (std 0.5), so that no path is hidden by a zero or near-zero init:
    the SRM word-bias gains start at 0 and the score head at N(0, 1e-2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("log_value"):  # a LogScale: stay inside its clamp [0, ln 100]
                param.fill_(math.log(3.0))
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.5)
    return module


def count_calls(scorer: LocalScorer) -> list[int]:
    """Count ``score_groups`` calls (one per chunk, again per chunk when checkpointing recomputes)."""
    calls = [0]
    inner = scorer.score_groups

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    scorer.score_groups = counted  # instance attribute: what LocalScorer._run looks up
    return calls


def grads_of(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d value / d inputs, zeros for inputs that value does not depend on."""
    grads = torch.autograd.grad(value, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def assert_scores_and_grads_equal(batched: torch.Tensor, loop: torch.Tensor, inputs: dict, scorer) -> None:
    """Values equal, and the gradients of a randomly weighted sum w.r.t. inputs and parameters."""
    torch.testing.assert_close(batched, loop, **TOL)
    weights = torch.randn(loop.shape, generator=torch.Generator().manual_seed(7), dtype=DT)
    names = [k for k in ("regions", "positions", "words") if k in inputs]
    params = dict(scorer.named_parameters())
    wrt = [inputs[k] for k in names] + list(params.values())
    g_batched = grads_of((batched * weights).sum(), wrt)
    g_loop = grads_of((loop * weights).sum(), wrt)
    for name, gb, gl in zip(names + list(params), g_batched, g_loop):
        torch.testing.assert_close(gb, gl, **TOL, msg=lambda m, n=name: f"gradient of {n}: {m}")
    # the weighted sum does depend on every input and every parameter
    assert all(g.abs().sum() > 0 for g in g_loop)


# ---------------------------------------------------------------------------------------------
# RECLF relation scorer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("srm", [True, False])
@pytest.mark.parametrize("irm", [True, False])
def test_relation_scorer_matches_loop(srm: bool, irm: bool) -> None:
    scorer = RelationScorer(D, DP, DM, srm=srm, irm=irm, srm_layers=2, srm_heads=2, chunk_pairs=10_000)
    scorer = randomise(scorer.double())
    x = make_inputs()
    calls = count_calls(scorer)
    batched = scorer.score_all(x["regions"], x["positions"], x["words"], x["mask"])
    assert calls[0] == 1  # one chunk: all B² pairs at once
    loop = score_matrix_loop(functools.partial(reclf_pair_score, scorer), x["regions"], x["words"], x["mask"], x["positions"])
    assert_scores_and_grads_equal(batched, loop, x, scorer)


def test_relation_scorer_without_word_bias_matches_loop() -> None:
    scorer = RelationScorer(D, DP, DM, srm_word_bias=False, srm_heads=4, chunk_pairs=10_000)
    scorer = randomise(scorer.double())
    assert all(layer.word_bias_gain is None for layer in scorer.srm.layers)
    x = make_inputs(b=3, r=6, seed=3)
    batched = scorer.score_all(x["regions"], x["positions"], x["words"], x["mask"])
    loop = score_matrix_loop(functools.partial(reclf_pair_score, scorer), x["regions"], x["words"], x["mask"], x["positions"])
    assert_scores_and_grads_equal(batched, loop, x, scorer)


@pytest.mark.parametrize(("b", "chunk_pairs", "chunks"), [(4, 4, 4), (3, 6, 2)])  # (3, 6): uneven 2 + 1
def test_relation_scorer_chunked_checkpointed_matches_loop(b: int, chunk_pairs: int, chunks: int) -> None:
    scorer = RelationScorer(D, DP, DM, chunk_pairs=chunk_pairs, checkpoint_chunks=True)
    scorer = randomise(scorer.double(), seed=2)
    x = make_inputs(b=b, seed=b)
    calls = count_calls(scorer)
    batched = scorer.score_all(x["regions"], x["positions"], x["words"], x["mask"])
    assert calls[0] == chunks  # the report axis was split
    loop = score_matrix_loop(functools.partial(reclf_pair_score, scorer), x["regions"], x["words"], x["mask"], x["positions"])
    assert_scores_and_grads_equal(batched, loop, x, scorer)
    assert calls[0] == 2 * chunks  # backward recomputed every chunk: activation checkpointing was on


# ---------------------------------------------------------------------------------------------
# GLoRIA pooling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("chunk_pairs", [10_000, 4])
def test_gloria_scorer_matches_loop(pooling: str, chunk_pairs: int) -> None:
    scorer = GloriaPoolingScorer(attention_scale=4.0, pooling_scale=5.0, pooling=pooling, learn_scales=True,
                                 chunk_pairs=chunk_pairs)
    scorer = randomise(scorer.double())
    x = make_inputs(seed=5)
    x.pop("positions")
    batched = scorer.score_all(x["regions"], None, x["words"], x["mask"])
    loop = score_matrix_loop(functools.partial(gloria_pair_score, scorer), x["regions"], x["words"], x["mask"])
    assert_scores_and_grads_equal(batched, loop, x, scorer)


def test_gloria_loop_loss_is_the_gloria_objective() -> None:
    """The benchmark's baseline computes exactly what our GLoRIA objective computes."""
    x = make_inputs(seed=6)
    scorer = GloriaPoolingScorer(4.0, 5.0, "sum").double()
    logits = 10.0 * scorer.score_all(x["regions"], None, x["words"], x["mask"])
    ours = LocalContrastiveLoss()({"local_logits": logits}, torch.arange(4))
    ref = gloria_loop_loss(x["regions"], x["words"], x["mask"].sum(1), 4.0, 5.0, 10.0)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)  # the loss casts logits to float32


# ---------------------------------------------------------------------------------------------
# top-K negatives
# ---------------------------------------------------------------------------------------------
def expected_candidates(similarity: torch.Tensor, same: torch.Tensor, k: int) -> list[list[int]]:
    """Per row: the (at most) k columns of highest similarity that are not duplicates of the row."""
    out = []
    for i in range(similarity.shape[0]):
        allowed = [j for j in range(similarity.shape[1]) if not same[i, j]]
        out.append(sorted(allowed, key=lambda j: -float(similarity[i, j]))[:k])
    return out


@pytest.mark.parametrize("scorer_kind", ["reclf", "gloria"])
def test_score_topk_matches_all_pairs(scorer_kind: str) -> None:
    b, k = 5, 4
    if scorer_kind == "reclf":
        scorer = randomise(RelationScorer(D, DP, DM, chunk_pairs=6).double(), seed=4)  # 6 pairs: groups chunked
    else:
        scorer = randomise(GloriaPoolingScorer(pooling="mean", learn_scales=True, chunk_pairs=6).double(), seed=4)
    x = make_inputs(b=b, seed=8)
    positions = x["positions"] if scorer_kind == "reclf" else None
    report_ids = torch.tensor([0, 1, 0, 2, 3])  # reports 0 and 2 are identical: 3 negatives < K
    same = report_ids.view(-1, 1) == report_ids.view(1, -1)
    similarity = torch.randn(b, b, generator=torch.Generator().manual_seed(9), dtype=DT)

    out = scorer.score_topk(x["regions"], positions, x["words"], x["mask"], similarity, same, k)
    pair_fn = functools.partial(reclf_pair_score if scorer_kind == "reclf" else gloria_pair_score, scorer)
    full = score_matrix_loop(pair_fn, x["regions"], x["words"], x["mask"], positions)  # (B, B) by loops

    rows = expected_candidates(similarity, same, k)  # reports per image
    cols = expected_candidates(similarity.t(), same.t(), k)  # images per report
    weights = torch.randn(2, b, 1 + k, generator=torch.Generator().manual_seed(10), dtype=DT)
    got_sum, ref_sum = 0.0, 0.0
    for i in range(b):
        for side, cands, full_line in (("row", rows[i], full[i]), ("col", cols[i], full[:, i])):
            n = len(cands)
            assert all(not same[i, j] for j in cands)
            valid = out[f"{side}_valid"][i]
            assert valid.tolist() == [True] * (1 + n) + [False] * (k - n)
            expected = full_line[[i] + cands]  # positive first, then candidates by global similarity
            got = out[f"{side}_scores"][i, : 1 + n]
            torch.testing.assert_close(got, expected, **TOL)
            w = weights[0 if side == "row" else 1, i, : 1 + n]
            got_sum = got_sum + (got * w).sum()
            ref_sum = ref_sum + (expected * w).sum()
    assert out["row_valid"][[0, 2], -1].eq(False).all() and out["row_valid"][[1, 3, 4]].all()

    wrt = [x["regions"], x["words"]] + ([positions] if positions is not None else []) + list(scorer.parameters())
    for g_b, g_l in zip(grads_of(got_sum, wrt), grads_of(ref_sum, wrt)):
        torch.testing.assert_close(g_b, g_l, **TOL)

    # the top-K loss ignores the invalid slots
    loss = LocalContrastiveLoss()(
        {"local_row_logits": 10 * out["row_scores"], "local_row_valid": out["row_valid"],
         "local_col_logits": 10 * out["col_scores"], "local_col_valid": out["col_valid"]},
        report_ids,
    )
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# model level: switches, gradients into SRM/IRM, score-head init
# ---------------------------------------------------------------------------------------------
REPORTS = [
    "small left pleural effusion. no pneumothorax.",
    "right upper lobe opacity, no effusion.",
    "heart size is normal. lungs are clear.",
    "heart size is normal. lungs are clear.",
    "large right pneumothorax and left basal opacity.",
    "mild cardiomegaly with small bilateral effusions.",
]


@pytest.fixture(scope="module")
def tiny_towers():
    """A WordPiece tokenizer, a tiny BERT and a resnet18 built once for the model-level tests."""
    from custom.engines.pretrained import build_reclf_model
    from custom.text import encode_reports, report_key, train_wordpiece

    torch.manual_seed(0)
    tokenizer = train_wordpiece(REPORTS * 3, vocab_size=100)
    text_config = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model = build_reclf_model(tokenizer, "resnet18", text_config=text_config, local_dim=16, position_dim=8,
                              match_dim=8, embed_dim=16)
    tokens = {k: torch.as_tensor(v) for k, v in encode_reports(tokenizer, REPORTS).items()}
    batch = {
        "images": torch.rand(len(REPORTS), 1, 32, 32, generator=torch.Generator().manual_seed(0)),
        **tokens,
        "report_ids": torch.tensor([report_key(r) for r in REPORTS]),
    }
    return model, batch


def _nonzero_grads(module: torch.nn.Module) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


@pytest.mark.parametrize("negatives", ["all", "topk"])
def test_gradients_reach_srm_and_irm(tiny_towers, negatives: str) -> None:
    from custom.losses import PretrainLoss
    from custom.nets.reclf import RECLFModel

    built, batch = tiny_towers
    torch.manual_seed(1)
    model = RECLFModel(built.image_encoder, built.text_encoder, local_dim=16, position_dim=8, match_dim=8,
                       embed_dim=16, local_negatives=negatives, topk=2)
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    assert ("local_logits" in out) == (negatives == "all")
    loss = PretrainLoss()(out, batch["report_ids"])["loss"]
    loss.backward()
    scorer = model.scorer
    for part in (scorer.srm, scorer.irm, scorer.match_feature, scorer.score_head, model.position_code):
        missing = [n for n, ok in _nonzero_grads(part).items() if not ok]
        assert not missing, f"no gradient in {type(part).__name__}: {missing}"


@pytest.mark.parametrize("off", [False, "false", "False", 0, "0"])
def test_switched_off_relation_modules_have_no_parameters(tiny_towers, off) -> None:
    from custom.nets.reclf import RECLFModel

    built, _ = tiny_towers
    kwargs = {"local_dim": 16, "position_dim": 8, "match_dim": 8, "embed_dim": 16}
    no_srm = RECLFModel(built.image_encoder, built.text_encoder, srm=off, **kwargs)
    no_irm = RECLFModel(built.image_encoder, built.text_encoder, irm=off, **kwargs)
    assert no_srm.scorer.srm is None and no_srm.scorer.irm is not None
    assert no_irm.scorer.irm is None and no_irm.scorer.srm is not None
    assert not any(".srm." in n for n, _ in no_srm.named_parameters())
    assert not any(".irm." in n for n, _ in no_irm.named_parameters())
    both_on = RECLFModel(built.image_encoder, built.text_encoder, srm="true", irm="True", **kwargs)
    assert both_on.scorer.srm is not None and both_on.scorer.irm is not None
    with pytest.raises(ValueError):
        RECLFModel(built.image_encoder, built.text_encoder, srm="maybe", **kwargs)


def test_built_model_has_relation_modules(tiny_towers) -> None:
    model, _ = tiny_towers  # through the factory, the config path
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("scorer.srm.") for n in names) and any(n.startswith("scorer.irm.") for n in names)


def test_score_head_init_is_small_but_not_zero() -> None:
    torch.manual_seed(0)
    # a wide head for a tight estimate of the std (relation modules off: they would be huge)
    wide = RelationScorer(local_dim=16, position_dim=4, match_dim=2048, srm=False, irm=False).score_head.weight.detach()
    assert torch.count_nonzero(wide) == wide.numel()
    assert 0.9e-2 < float(wide.std()) < 1.1e-2  # N(0, 1e-2): 2048 samples, ±10% is > 6 standard errors
    assert abs(float(wide.mean())) < 1e-3
    default = RelationScorer().score_head.weight.detach()  # the model's default D_m = 64
    assert torch.count_nonzero(default) == default.numel()
    assert 0.5e-2 < float(default.std()) < 1.5e-2
