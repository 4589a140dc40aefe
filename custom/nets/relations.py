"""RECLF's relation modules over the local matchings of one image/report pair.

SRM (semantic relations): masked self-attention across the matchings {m_ijk}_k of a pair, so a
disease-word matching and its location-word matching inform each other; optionally biased by
the report's own word–word similarity. IRM (importance relations): a masked softmax over
importance logits u_ijk = ψ(m'_ijk) + ψ₀(e_jk).

Tensors carry arbitrary leading dims (the pair layout of :mod:`custom.nets.matching`); masks and
biases broadcast over them, so the report-only terms are never expanded per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .matching import NEG_INF, masked_softmax


class RelationLayer(nn.Module):
    """Pre-norm self-attention + MLP block over the word axis, with an additive attention bias.

    Args:
        dim: matching feature size D_m.
        heads: attention heads.
        mlp_ratio: hidden size of the MLP relative to ``dim``.
        word_bias: learn a per-head gain on an external (T, T) bias (the word–word similarity).
        locality: > 0 adds −γ_h·|k − l| to the attention logits of words k, l (their distance in
            the report), with a learnable per-head γ_h initialised to ``locality``: a prior that a
            location word relates to the finding word next to it. 0 (default): no such term.
    """

    def __init__(self, dim: int, heads: int = 2, mlp_ratio: float = 2.0, word_bias: bool = True,
                 locality: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"match_dim {dim} must be divisible by srm_heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.word_bias_gain = nn.Parameter(torch.zeros(heads)) if word_bias else None
        self.locality_gain = nn.Parameter(torch.full((heads,), float(locality))) if float(locality) > 0 else None

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, word_sim: torch.Tensor | None = None,
        distance: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (..., T, D) matching features.
            key_mask: (..., T) bool, broadcastable to x's leading dims.
            word_sim: optional (..., T, T) bias, broadcastable.
            distance: optional (T, T) word distances |k − l| (used with ``locality``).

        Returns:
            updated x (..., T, D) and attention (..., heads, T, T).
        """
        *lead, t, d = x.shape
        h = self.heads
        qkv = self.qkv(self.norm1(x)).view(*lead, t, 3, h, d // h)
        q, k, v = qkv.unbind(-3)  # each (..., T, H, dh)
        q, k, v = (z.transpose(-2, -3) for z in (q, k, v))  # (..., H, T, dh)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // h)
        if self.word_bias_gain is not None and word_sim is not None:
            scores = scores + word_sim.unsqueeze(-3) * self.word_bias_gain.view(h, 1, 1)
        if self.locality_gain is not None and distance is not None:
            scores = scores - distance.to(scores.dtype) * self.locality_gain.view(h, 1, 1)
        scores = scores.masked_fill(~key_mask.unsqueeze(-2).unsqueeze(-2), NEG_INF)
        attn = torch.softmax(scores, dim=-1)
        mixed = torch.matmul(attn, v).transpose(-2, -3).reshape(*lead, t, d)
        x = x + self.proj(mixed)
        x = x + self.mlp(self.norm2(x))
        return x, attn


class SemanticRelationModule(nn.Module):
    """SRM: a stack of :class:`RelationLayer` over the matchings of each pair."""

    def __init__(self, dim: int, layers: int = 1, heads: int = 2, word_bias: bool = True, locality: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(RelationLayer(dim, heads, word_bias=word_bias, locality=locality)
                                    for _ in range(int(layers)))

    def forward(
        self, matchings: torch.Tensor, key_mask: torch.Tensor, word_sim: torch.Tensor | None = None,
        distance: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """matchings (..., T, D) -> (..., T, D); also the last layer's attention (..., H, T, T)."""
        attn = None
        for layer in self.layers:
            matchings, attn = layer(matchings, key_mask, word_sim, distance)
        return matchings, attn


class ImportanceRelationModule(nn.Module):
    """IRM: β_ijk = masked softmax_k(ψ(m'_ijk) + ψ₀(e_jk)).

    ψ₀ is a report-only prior, so that words such as "and"/"the" can learn low importance
    independent of the image; ψ makes the weight pair-dependent.
    """

    def __init__(self, match_dim: int, word_dim: int) -> None:
        super().__init__()
        self.pair_logit = nn.Sequential(nn.Linear(match_dim, match_dim), nn.GELU(), nn.Linear(match_dim, 1))
        self.word_prior = nn.Linear(word_dim, 1)

    def forward(self, matchings: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            matchings: (G, Nv, Ne, T, Dm); words: (G, Ne, T, D); word_mask: (G, Ne, T).

        Returns:
            β (G, Nv, Ne, T), summing to 1 over valid words.
        """
        logits = self.pair_logit(matchings).squeeze(-1) + self.word_prior(words).squeeze(-1).unsqueeze(1)
        return masked_softmax(logits, word_mask.unsqueeze(1), dim=-1)
