"""Pair scores S(i, j) from local matchings: GLoRIA pooling and RECLF's relation-enhanced score.

A scorer turns region features V (B_i, R, D), position codes P (R, Dp) and word features
E (B_t, T, D) with a word mask into local similarities for
- all B_i x B_t pairs (:meth:`LocalScorer.score_all`), the report axis processed in chunks, each
  chunk under activation checkpointing so that autograd memory is bounded by one chunk; or
- the positive plus the K hardest negatives per image and per report
  (:meth:`LocalScorer.score_topk`), O(B·K) pairs.
Subclasses implement :meth:`score_groups` on the group layout of :mod:`custom.nets.matching`.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .matching import attend, region_attention, word_region_similarity
from .relations import ImportanceRelationModule, SemanticRelationModule
from .scales import LogScale


def word_extent(word_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid word + 1 along the last axis (masks need not be prefixes)."""
    slots = torch.arange(1, word_mask.shape[-1] + 1, device=word_mask.device)
    return (word_mask * slots).amax(-1)


def length_buckets(extents: list[int], per_slot: int, budget: int, overhead_reports: float = 2.0) -> list[tuple[int, int]]:
    """Split reports sorted by length (descending) into contiguous buckets, each padded to its first.

    Minimises Σ_b n_b · t_b (word slots computed, padding included) + a per-bucket overhead of
    ``overhead_reports`` mean-length reports (every chunk is another round of ~60 small kernels),
    subject to ``per_slot · n_b · t_b ≤ budget`` (the memory bound of a checkpointed chunk; a
    single report is always allowed). Exact dynamic programme over the split points, O(B²).

    Args:
        extents: word extent of each report, sorted descending (every entry ≥ 1).
        per_slot: attention elements per word slot of one report (images × regions).
        budget: ``chunk_elements``.

    Returns:
        [(start, end)] index ranges into ``extents`` covering it in order.
    """
    n = len(extents)
    if n == 0:
        return []
    overhead = overhead_reports * sum(extents) / n
    best = [0.0] + [float("inf")] * n  # best[j]: cost of bucketing the first j reports
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end - 1, -1, -1):
            size = end - start
            if size > 1 and per_slot * size * extents[start] > budget:
                break  # larger buckets (smaller start) only grow
            cost = best[start] + size * extents[start] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    bounds, end = [], n
    while end > 0:
        bounds.append((cut[end], end))
        end = cut[end]
    return bounds[::-1]


class LocalScorer(nn.Module):
    """Shared batching logic: chunks, activation checkpointing and top-K candidate selection.

    Args:
        chunk_pairs: image/report pairs computed at once; 0/None sizes chunks by ``chunk_elements``.
        chunk_elements: budget of pairs × regions × words per chunk (the size of the attention
            tensor), so that memory is bounded whatever the grid size and report length.
        checkpoint_chunks: recompute each chunk in backward instead of storing its activations.
    """

    def __init__(
        self, chunk_pairs: int | None = None, checkpoint_chunks: bool = True, chunk_elements: int = 2**22
    ) -> None:
        super().__init__()
        self.chunk_pairs = int(chunk_pairs) if chunk_pairs else 0
        self.chunk_elements = max(1, int(chunk_elements))
        self.checkpoint_chunks = bool(checkpoint_chunks)

    def _pairs_per_chunk(self, regions: int, words: int) -> int:
        if self.chunk_pairs > 0:
            return self.chunk_pairs
        return max(1, self.chunk_elements // max(1, regions * words))

    def score_groups(self, regions, positions, words, word_mask, details: bool = False):
        """(G, Nv, R, D), (R, Dp), (G, Ne, T, D), (G, Ne, T) -> S (G, Nv, Ne) [, details]."""
        raise NotImplementedError

    def _run(self, regions, positions, words, word_mask, chunked: bool = True) -> torch.Tensor:
        # recomputation only pays when there are several chunks: one chunk is already the bound
        if chunked and self.checkpoint_chunks and torch.is_grad_enabled():
            return checkpoint(self.score_groups, regions, positions, words, word_mask, use_reentrant=False)
        return self.score_groups(regions, positions, words, word_mask)

    def score_all(
        self, regions: torch.Tensor, positions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> torch.Tensor:
        """S for every image × report: regions (B_i, R, D), words (B_t, T, D) -> (B_i, B_t).

        Reports are sorted by length and each chunk is trimmed to its own longest report, so
        padding costs almost nothing. With ``chunk_pairs`` unset the chunks are length buckets
        (:func:`length_buckets`): even when all B² pairs fit the memory budget at once, one chunk
        would pad every report to the longest (measured on the demo data: 43 % of the word slots
        were padding), and every per-word cost of the scorer (matching MLP, SRM, IRM) scales with
        the padded length. Activation checkpointing is used only when the chunks together exceed
        ``chunk_elements``.
        """
        n_img, n_txt = regions.shape[0], words.shape[0]
        extent = word_extent(word_mask)
        order = torch.argsort(extent, descending=True, stable=True)
        extent_sorted = [max(1, int(x)) for x in extent[order].tolist()]
        if self.chunk_pairs > 0:  # an explicit chunk size: fixed-size chunks of the sorted reports
            step = max(1, self.chunk_pairs // max(n_img, 1))
            bounds = [(j, min(j + step, n_txt)) for j in range(0, n_txt, step)]
            chunked = step < n_txt
        else:
            per_report = n_img * regions.shape[1]  # attention elements per word slot of one report
            bounds = length_buckets(extent_sorted, per_report, self.chunk_elements)
            chunked = per_report * sum((b - a) * extent_sorted[a] for a, b in bounds) > self.chunk_elements
        cols = []
        for a, b in bounds:
            idx = order[a:b]
            t = extent_sorted[a]
            cols.append(
                self._run(regions.unsqueeze(0), positions, words[idx, :t][None], word_mask[idx, :t][None], chunked)[0]
            )
        return torch.cat(cols, dim=1)[:, torch.argsort(order)]

    def score_pairs_grouped(
        self, regions: torch.Tensor, positions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> torch.Tensor:
        """Scores inside G independent groups: (G, Nv, R, D) x (G, Ne, T, D) -> (G, Nv, Ne), chunked over G."""
        per_group = regions.shape[1] * words.shape[1]
        t = max(1, int(word_extent(word_mask).max()))  # trim padding shared by every group
        words, word_mask = words[..., :t, :], word_mask[..., :t]
        step = max(1, self._pairs_per_chunk(regions.shape[2], t) // max(per_group, 1))
        chunked = step < regions.shape[0]
        parts = [
            self._run(regions[g : g + step], positions, words[g : g + step], word_mask[g : g + step], chunked)
            for g in range(0, regions.shape[0], step)
        ]
        return torch.cat(parts, dim=0)

    def score_topk(
        self,
        regions: torch.Tensor,
        positions: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        global_similarity: torch.Tensor,
        same_report: torch.Tensor,
        k: int,
    ) -> dict[str, torch.Tensor]:
        """Positive + K hardest negatives per image (row) and per report (column).

        Candidates are the top-K of the *detached* global similarity in each row / column;
        duplicates of the positive (identical reports) are excluded, never used as negatives.

        Args:
            regions (B, R, D), words (B, T, D), word_mask (B, T): the pairs i↔i are positives.
            global_similarity: (B, B) image × report similarity (detached here).
            same_report: (B, B) bool, True where reports i and j are identical (incl. diagonal).
            k: number of negatives.

        Returns:
            ``row_scores``/``col_scores`` (B, 1 + K') with the positive in column 0, and
            ``row_valid``/``col_valid`` (B, 1 + K') masks (False where fewer than K negatives exist).
        """
        b = regions.shape[0]
        k = max(1, min(int(k), b - 1))
        sim = global_similarity.detach().masked_fill(same_report, float("-inf"))
        idx = torch.arange(b, device=regions.device).unsqueeze(1)
        row_val, row_neg = sim.topk(k, dim=1)  # hardest reports per image
        col_val, col_neg = sim.t().topk(k, dim=1)  # hardest images per report
        row_idx = torch.cat([idx, row_neg], dim=1)  # (B, 1+K) report indices
        col_idx = torch.cat([idx, col_neg], dim=1)  # (B, 1+K) image indices
        row_scores = self.score_pairs_grouped(regions.unsqueeze(1), positions, words[row_idx], word_mask[row_idx])
        col_scores = self.score_pairs_grouped(
            regions[col_idx], positions, words.unsqueeze(1), word_mask.unsqueeze(1)
        )
        ones = torch.ones(b, 1, dtype=torch.bool, device=regions.device)
        return {
            "row_scores": row_scores[:, 0, :],
            "col_scores": col_scores[:, :, 0],
            "row_valid": torch.cat([ones, torch.isfinite(row_val)], dim=1),
            "col_valid": torch.cat([ones, torch.isfinite(col_val)], dim=1),
        }


class GloriaPoolingScorer(LocalScorer):
    """GLoRIA's local similarity (the baseline RECLF improves on).

    α = softmax_r(s_att · softmax_k(<e_k, v_r>)) as GLoRIA's released code orders it;
    S = log Σ_k exp(γ s_k) (``pooling='sum'``) or log mean_k exp(γ s_k) (``'mean'``, which does
    not grow with report length). As in GLoRIA's released ``local_loss`` there is no 1/γ (DESIGN
    §2 writes one; with it the ×10 logits would be 5× softer than GLoRIA's).

    Args:
        attention_scale: s_att (GLoRIA: 4). pooling_scale: γ (GLoRIA: 5).
        pooling: ``sum`` | ``mean``. learn_scales: learn the scales (GLoRIA keeps them fixed).
    """

    def __init__(
        self,
        attention_scale: float = 4.0,
        pooling_scale: float = 5.0,
        pooling: str = "sum",
        learn_scales: bool = False,
        chunk_pairs: int | None = None,
        checkpoint_chunks: bool = True,
        chunk_elements: int = 2**22,
    ) -> None:
        super().__init__(chunk_pairs, checkpoint_chunks, chunk_elements)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"gloria_pooling must be 'sum' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.attention_scale = LogScale(attention_scale, learnable=learn_scales)
        self.pooling_scale = LogScale(pooling_scale, learnable=learn_scales)

    def score_groups(self, regions, positions, words, word_mask, details: bool = False):
        g, nv = regions.shape[:2]
        ne, t = words.shape[1:3]
        alpha = region_attention(regions, words, word_mask, self.attention_scale(), mode="gloria")
        context, _ = attend(alpha, regions)
        sim = word_region_similarity(context.view(g, nv, ne, t, -1), words)  # (G, Nv, Ne, T)
        gamma = self.pooling_scale()
        mask = word_mask.unsqueeze(1)
        # GLoRIA's released code: log Σ_k exp(γ s_k), *not* divided by γ, then ×10 on the logits
        pooled = torch.logsumexp((gamma * sim).masked_fill(~mask, float("-inf")), dim=-1)
        if self.pooling == "mean":
            pooled = pooled - torch.log(mask.sum(-1).clamp_min(1).to(pooled.dtype))
        score = torch.where(mask.any(-1), pooled, torch.zeros_like(pooled))  # a report without words: 0
        if details:
            return score, {"attention": alpha.view(g, nv, ne, t, -1), "word_similarity": sim}
        return score


class RelationScorer(LocalScorer):
    """RECLF's relation-enhanced local similarity.

    m_ijk = φ([ĉ ⊙ ê, |ĉ − ê|, P_ijk]); m' = SRM(m) (or m); β = IRM(m', e) (or uniform);
    S(i, j) = Σ_k β_ijk (s_ijk + w · m'_ijk), w initialised N(0, 1e-2) so that SRM receives
    gradient from the first step.

    Args:
        local_dim: D of the region/word features. position_dim: Dp of the position codes.
        match_dim: D_m of the matching features.
        srm, irm: the two relation modules (off: m' = m; uniform β over valid words).
        srm_layers, srm_heads, srm_word_bias: SRM size and whether it sees word–word similarity.
        srm_locality: > 0: SRM attention logits get −γ·|k − l| for words k, l of a report (γ
            learnable per head, initialised to this); 0 (default) leaves SRM as DESIGN §2 has it.
        attention_scale: s_att of α = softmax_r(s_att · cos(e, v)); learnable if ``learn_scales``.
    """

    def __init__(
        self,
        local_dim: int = 128,
        position_dim: int = 32,
        match_dim: int = 64,
        srm: bool = True,
        irm: bool = True,
        srm_layers: int = 1,
        srm_heads: int = 2,
        srm_word_bias: bool = True,
        attention_scale: float = 4.0,
        learn_scales: bool = True,
        chunk_pairs: int | None = None,
        checkpoint_chunks: bool = True,
        chunk_elements: int = 2**22,
        srm_locality: float = 0.0,
    ) -> None:
        super().__init__(chunk_pairs, checkpoint_chunks, chunk_elements)
        self.attention_scale = LogScale(attention_scale, learnable=learn_scales)
        self.match_feature = nn.Sequential(
            nn.Linear(2 * local_dim + position_dim, match_dim), nn.GELU(), nn.Linear(match_dim, match_dim)
        )
        self.srm_locality = float(srm_locality)
        self.srm = SemanticRelationModule(match_dim, srm_layers, srm_heads, srm_word_bias, self.srm_locality) if srm else None
        self.irm = ImportanceRelationModule(match_dim, local_dim) if irm else None
        self.score_head = nn.Linear(match_dim, 1, bias=False)
        nn.init.normal_(self.score_head.weight, std=1e-2)

    def matching_features(
        self, alpha: torch.Tensor, regions: torch.Tensor, positions: torch.Tensor, e_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """s_ijk and m_ijk = φ([ĉ ⊙ ê, |ĉ − ê|, P]) from the attention, without the concatenation.

        Args:
            alpha: (G, Nv, Ne·T, R) word→region attention. regions: (G, Nv, R, D).
            positions: (R, Dp). e_hat: (G, 1, Ne, T, D) unit word vectors.

        Returns:
            sim (G, Nv, Ne, T) = cos(c, e) and matchings (G, Nv, Ne, T, D_m).

        Equal to ``match_feature(cat([ĉ⊙ê, |ĉ−ê|, P]))`` with ``sim = (ĉ⊙ê).sum(-1)``, but
        every (pairs × T × D) temporary costs memory traffic (and on CPU fresh pages) in the
        forward and again in the backward, and they dominate the scorer's time (profiled: the
        elementwise ops on them took more than the matmuls). So: c and P by two matmuls instead
        of one on [V, P] that is sliced (the slice's backward zero-fills a (pairs·T, D + Dp)
        gradient); ĉ by a multiply with 1/|c| instead of a broadcast division (whose backward
        builds several D-sized temporaries); ĉ ⊙ ê computed once for s and φ; and φ's first
        layer applied block by block to its three inputs (weight column slices) and summed,
        so the (pairs·T, 2D + Dp) concatenation and its backward never exist.
        """
        g, nv, _, d = regions.shape
        ne, t = e_hat.shape[2:4]
        context = torch.matmul(alpha, regions).view(g, nv, ne, t, d)  # c_ijk
        attended_pos = torch.matmul(alpha, positions.to(alpha.dtype)).view(g, nv, ne, t, -1)  # P_ijk
        # F.normalize's x / max(|x|, eps), as a multiply by the reciprocal of the (.., 1) norm
        c_hat = context * torch.linalg.vector_norm(context, dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()
        product = c_hat * e_hat  # ĉ ⊙ ê
        sim = product.sum(-1)  # s_ijk = cos(c_ijk, e_jk), (G, Nv, Ne, T)
        first, act, second = self.match_feature
        w = first.weight  # (D_m, 2D + Dp): columns [ĉ⊙ê | |ĉ−ê| | P]
        hidden = F.linear(attended_pos, w[:, 2 * d :], first.bias).view(-1, w.shape[0])
        hidden = torch.addmm(hidden, product.view(-1, d), w[:, :d].t())
        hidden = torch.addmm(hidden, (c_hat - e_hat).abs().view(-1, d), w[:, d : 2 * d].t())
        matchings = second(act(hidden)).view(g, nv, ne, t, -1)
        return sim, matchings

    def score_groups(self, regions, positions, words, word_mask, details: bool = False):
        g, nv = regions.shape[:2]
        ne, t = words.shape[1:3]
        alpha = region_attention(regions, words, word_mask, self.attention_scale(), mode="cosine")
        e_hat = F.normalize(words, dim=-1)
        sim, matchings = self.matching_features(alpha, regions, positions, e_hat.unsqueeze(1))
        key_mask = word_mask.unsqueeze(1)  # (G, 1, Ne, T): broadcasts over images
        srm_attn = None
        if self.srm is not None:
            word_sim = torch.matmul(e_hat, e_hat.transpose(-1, -2)).unsqueeze(1)  # (G, 1, Ne, T, T)
            distance = None
            if self.srm_locality > 0:  # word k of a report is its k-th word: |k - l| words apart
                slots = torch.arange(t, device=words.device)
                distance = (slots.view(-1, 1) - slots.view(1, -1)).abs()
            matchings, srm_attn = self.srm(matchings, key_mask, word_sim, distance)
        if self.irm is not None:
            weights = self.irm(matchings, words, word_mask)
        else:
            weights = key_mask.to(sim.dtype) / key_mask.sum(-1, keepdim=True).clamp_min(1)
        score = (weights * (sim + self.score_head(matchings).squeeze(-1))).sum(-1)
        if details:
            attention = alpha.view(g, nv, ne, t, -1)
            return score, {"attention": attention, "word_similarity": sim, "importance": weights, "srm_attention": srm_attn}
        return score
