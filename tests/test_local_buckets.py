"""Length buckets of the all-pairs local term (custom.nets.scorers.length_buckets): with the
default chunking the reports are split by length so padding is not computed, and the scores and
gradients still equal the per-pair loop reference (float64, padding filled with garbage)."""

from __future__ import annotations

import functools

import torch
from test_local_equivalence import DM, DP, assert_scores_and_grads_equal, count_calls, make_inputs, randomise

from benchmarks.reference import gloria_pair_score, reclf_pair_score, score_matrix_loop
from custom.nets.scorers import GloriaPoolingScorer, RelationScorer, length_buckets


def test_length_buckets_cover_in_order_and_respect_the_budget() -> None:
    extents = [47, 41, 40, 32, 32, 29, 28, 26, 25, 24, 23, 23, 22, 18, 17, 4]  # measured demo lengths
    bounds = length_buckets(extents, per_slot=256, budget=2**22)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(extents)
    assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    padded = sum((b - a) * extents[a] for a, b in bounds)
    assert sum(extents) <= padded < 0.75 * len(extents) * extents[0]  # far less than one padded chunk
    tight = length_buckets(extents, per_slot=256, budget=256 * 100)  # ≤ 100 word slots per bucket
    assert all((b - a) == 1 or (b - a) * extents[a] * 256 <= 256 * 100 for a, b in tight)
    assert length_buckets([5, 5, 5, 5], per_slot=1, budget=10**6) == [(0, 4)]  # equal lengths: one chunk
    assert length_buckets([], 1, 1) == []


def test_bucketed_relation_scorer_matches_loop() -> None:
    scorer = randomise(RelationScorer(12, DP, DM, srm_layers=2).double(), seed=5)  # default: length buckets
    x = make_inputs(b=6, t=9, seed=6)  # lengths 9, 3, 1, 5, 6, 2
    calls = count_calls(scorer)
    batched = scorer.score_all(x["regions"], x["positions"], x["words"], x["mask"])
    assert calls[0] > 1  # split by length although everything fits one chunk...
    loop = score_matrix_loop(functools.partial(reclf_pair_score, scorer), x["regions"], x["words"], x["mask"], x["positions"])
    n = calls[0]
    assert_scores_and_grads_equal(batched, loop, x, scorer)
    assert calls[0] == n  # ...and not checkpointed: the backward recomputed nothing


def test_bucketed_gloria_scorer_matches_loop() -> None:
    scorer = randomise(GloriaPoolingScorer(pooling="sum", learn_scales=True).double(), seed=5)
    x = make_inputs(b=6, t=9, seed=7)
    x.pop("positions")  # GLoRIA has no position codes
    calls = count_calls(scorer)
    batched = scorer.score_all(x["regions"], None, x["words"], x["mask"])
    assert calls[0] > 1
    loop = score_matrix_loop(functools.partial(gloria_pair_score, scorer), x["regions"], x["words"], x["mask"])
    assert_scores_and_grads_equal(batched, loop, x, scorer)
