"""Small exact checks: retrieval recall with duplicate reports, strict booleans, lr schedule."""

from __future__ import annotations

import pytest
import torch

from custom.metrics import retrieval_recall
from custom.optim import warmup_scheduler
from custom.utils import as_bool


def test_retrieval_recall_counts_duplicate_reports_once():
    # 4 pairs; reports 0 and 2 are identical (key 7)
    keys = torch.tensor([7, 8, 7, 9])
    sim = torch.tensor([
        [0.1, 0.9, 0.2, 0.0],  # image 0: own text (key 7) best at 0.2 -> rank 1 among {8: 0.9, 7: 0.1/0.2 first, 9: 0.0}
        [0.0, 1.0, 0.0, 0.0],  # image 1: own report top
        [0.5, 0.0, 0.1, 0.9],  # image 2: own key 7 scored by the first occurrence (column 0) = 0.5, below 9: 0.9
        [0.0, 0.0, 0.0, 0.3],  # image 3: own report top (ties count for the query)
    ])
    m = retrieval_recall(sim, keys, ks=(1, 2))
    # i2t over distinct reports (columns 0, 1, 3): ranks 1, 0, 1, 0
    assert m["i2t_recall@1"] == pytest.approx(0.5) and m["i2t_recall@2"] == pytest.approx(1.0)
    # t2i: text 7 -> best positive image score: max(sim[0,0]=0.1, sim[2,0]=0.5)=0.5, beaten by none -> rank 0
    # text 8 -> image 1 (1.0), rank 0; text 9 -> image 2 (0.9) beats image 3 (0.3) -> rank 1
    assert m["t2i_recall@1"] == pytest.approx(2 / 3) and m["t2i_recall@2"] == pytest.approx(1.0)
    assert m["n_samples"] == 4 and m["n_unique_reports"] == 3


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("False", False), ("0", False), (0, False),
                                                 ("true", True), (True, True), ("1", True)])
def test_as_bool_is_strict(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_garbage():
    with pytest.raises(ValueError, match="srm"):
        as_bool("maybe", "srm")


def test_constant_schedule_does_not_depend_on_epochs():
    lrs = []
    for epochs in (2, 4):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_scheduler(opt, epochs, 10, warmup_epochs=0.5)
        seen = []
        for _ in range(20):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        lrs.append(seen)
    assert lrs[0] == lrs[1] and lrs[0][0] == pytest.approx(0.2) and lrs[0][-1] == 1.0


def test_gloria_scorer_is_finite_for_a_report_without_words():
    from custom.losses import LocalContrastiveLoss
    from custom.nets.scorers import GloriaPoolingScorer

    regions = torch.randn(3, 4, 8, requires_grad=True)
    words = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    logits = 10 * GloriaPoolingScorer().score_all(regions, None, words, mask)
    loss = LocalContrastiveLoss()({"local_logits": logits}, torch.arange(3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(regions.grad).all()
