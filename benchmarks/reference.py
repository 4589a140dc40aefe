"""Plain per-pair reference implementations of the local scores, for tests and benchmarks.

Everything here is written out one image/report pair at a time (one SRM head at a time),
straight from the equations of DESIGN §2, independently of the batched code in
``custom/nets/matching.py``, ``relations.py`` and ``scorers.py``. Only the *parameters* of the
modules are reused (weights read off ``nn.Linear`` / ``nn.LayerNorm`` / ``LogScale``), never their
batched forwards, so an agreement between the two is evidence that the batching, the group
layout, the chunking/checkpointing and the padding masks are right.

Padding is handled the obvious way: padded words are *dropped* before anything is computed (no
masks), so the reference also checks the masking of the batched code.

:func:`gloria_loop_loss` is the speed/memory baseline of ``benchmarks/local_loss.py``: GLoRIA's
released local loss (loop over captions, 768-d attention), restructured only to take
(B, R, D) region features instead of (B, D, h, w).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-12  # the eps of F.normalize: a zero vector has zero cosine with everything


# ---------------------------------------------------------------------------------------------
# small building blocks, written from their definitions
# ---------------------------------------------------------------------------------------------
def _unit(x: torch.Tensor) -> torch.Tensor:
    """x / max(||x||, eps) along the last dim (what F.normalize does)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """x W^T + b with the layer's parameters."""
    out = x @ layer.weight.t()
    return out if layer.bias is None else out + layer.bias


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) · γ + β over the last dim (biased variance, like LayerNorm)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, nn.GELU's default."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _mlp(x: torch.Tensor, seq: nn.Sequential) -> torch.Tensor:
    """Linear → GELU → Linear, read off a ``nn.Sequential(Linear, GELU, Linear)``."""
    first, act, second = seq[0], seq[1], seq[2]
    assert isinstance(first, nn.Linear) and isinstance(act, nn.GELU) and isinstance(second, nn.Linear)
    assert act.approximate == "none", "the reference writes out the exact GELU"
    return _linear(_gelu(_linear(x, first)), second)


# ---------------------------------------------------------------------------------------------
# RECLF: relation-enhanced score of one pair
# ---------------------------------------------------------------------------------------------
def _srm_layer(layer: nn.Module, x: torch.Tensor, word_sim: torch.Tensor) -> torch.Tensor:
    """One pre-norm SRM block over the valid words of one pair, heads written out.

    Args:
        layer: a ``RelationLayer`` (only its parameters are used).
        x: (T', Dm) matching features of the valid words.
        word_sim: (T', T') cosine similarity of the report's valid words.

    Returns:
        (T', Dm): x + proj(MHA(LN1 x)), then + MLP(LN2 ·).
    """
    dm = x.shape[-1]
    heads = layer.heads
    dh = dm // heads
    xn = _layer_norm(x, layer.norm1)
    w, b = layer.qkv.weight, layer.qkv.bias  # rows: [q (all heads) | k | v], head-major inside each
    outs = []
    for h in range(heads):
        rows = slice(h * dh, (h + 1) * dh)
        wq, wk, wv = w[rows], w[dm:][rows], w[2 * dm :][rows]
        bq, bk, bv = b[rows], b[dm:][rows], b[2 * dm :][rows]
        q, k, v = xn @ wq.t() + bq, xn @ wk.t() + bk, xn @ wv.t() + bv  # (T', dh) each
        scores = q @ k.t() / math.sqrt(dh)  # (T', T')
        if layer.word_bias_gain is not None:
            scores = scores + layer.word_bias_gain[h] * word_sim
        outs.append(torch.softmax(scores, dim=-1) @ v)
    x = x + _linear(torch.cat(outs, dim=-1), layer.proj)  # heads concatenated in head order
    return x + _mlp(_layer_norm(x, layer.norm2), layer.mlp)


def reclf_pair_score(
    scorer: nn.Module, v: torch.Tensor, p: torch.Tensor, e: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """RECLF's S(i, j) for one image/report pair, straight from DESIGN §2 (words as matrix rows).

    Args:
        scorer: a ``RelationScorer``; its parameters (attention scale, φ, SRM, IRM, w) are used.
        v: (R, D) region features of image i.
        p: (R, Dp) position codes p_r.
        e: (T, D) word features of report j (padded).
        mask: (T,) bool, valid words of report j.

    Returns:
        scalar S = Σ_k β_k (s_k + w · m'_k) over the valid words k.
    """
    e = e[mask.bool()]  # (T', D): padded words are dropped, not masked
    n_words = e.shape[0]
    v_hat, e_hat = _unit(v), _unit(e)
    alpha = torch.softmax(scorer.attention_scale() * (v_hat @ e_hat.t()), dim=0)  # (R, T'): α_kr over r
    c = alpha.t() @ v  # (T', D): c_k = Σ_r α_kr v_r
    pos = alpha.t() @ p  # (T', Dp): P_k = Σ_r α_kr p_r
    c_hat = _unit(c)
    s = (c_hat * e_hat).sum(-1)  # (T',): s_k = cos(c_k, e_k)
    m = _mlp(torch.cat([c_hat * e_hat, (c_hat - e_hat).abs(), pos], dim=-1), scorer.match_feature)  # (T', Dm)

    if scorer.srm is not None:
        word_sim = e_hat @ e_hat.t()  # (T', T'): cos(e_k, e_l)
        for layer in scorer.srm.layers:
            m = _srm_layer(layer, m, word_sim)

    if scorer.irm is not None:
        irm = scorer.irm
        u = _mlp(m, irm.pair_logit).squeeze(-1) + _linear(e, irm.word_prior).squeeze(-1)  # ψ(m') + ψ₀(e)
        beta = torch.softmax(u, dim=0)
    else:
        beta = torch.full((n_words,), 1.0 / max(n_words, 1), dtype=s.dtype, device=s.device)

    head = scorer.score_head.weight[0]  # w, (Dm,)
    return (beta * (s + m @ head)).sum()


# ---------------------------------------------------------------------------------------------
# GLoRIA pooling score of one pair
# ---------------------------------------------------------------------------------------------
def gloria_pair_score(scorer: nn.Module, v: torch.Tensor, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GLoRIA's local similarity of one pair in GLoRIA's order (DESIGN §2).

    a_rk = <e_k, v_r> (raw dot); softmax over the valid words k per region; × attention scale;
    softmax over regions; c_k = Σ_r α_rk v_r; s_k = cos(c_k, e_k);
    S = log Σ_k exp(γ s_k) (``pooling == 'sum'``) or log mean_k exp(γ s_k) (``'mean'``), no 1/γ as in GLoRIA's code.

    Args:
        scorer: a ``GloriaPoolingScorer`` (scales and ``pooling`` are read off it).
        v: (R, D); e: (T, D); mask: (T,) bool.
    """
    e = e[mask.bool()]  # (T', D)
    n_words = e.shape[0]
    a = v @ e.t()  # (R, T')
    a = torch.softmax(a, dim=1)  # over words, for each region
    alpha = torch.softmax(a * scorer.attention_scale(), dim=0)  # over regions, for each word
    c = alpha.t() @ v  # (T', D): c_k = Σ_r α_rk v_r
    s = (_unit(c) * _unit(e)).sum(-1)  # (T',): cos(c_k, e_k)
    gamma = scorer.pooling_scale()
    pooled = torch.log(torch.exp(gamma * s).sum())
    if scorer.pooling == "mean":
        pooled = pooled - math.log(n_words)
    return pooled  # GLoRIA's released code: no 1/γ


# ---------------------------------------------------------------------------------------------
# all pairs, by a double loop
# ---------------------------------------------------------------------------------------------
def score_matrix_loop(
    pair_fn: Callable[..., torch.Tensor],
    regions: torch.Tensor,
    words: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """S[i, j] = pair_fn(regions[i], [positions,] words[j], mask[j]) by looping over i and j.

    Args:
        pair_fn: e.g. ``functools.partial(reclf_pair_score, scorer)`` (takes positions) or
            ``functools.partial(gloria_pair_score, scorer)`` (does not; leave ``positions`` None).
        regions: (B_i, R, D); words: (B_t, T, D); mask: (B_t, T) bool; positions: (R, Dp).

    Returns:
        (B_i, B_t).
    """
    rows = []
    for i in range(regions.shape[0]):
        row = []
        for j in range(words.shape[0]):
            if positions is None:
                row.append(pair_fn(regions[i], words[j], mask[j]))
            else:
                row.append(pair_fn(regions[i], positions, words[j], mask[j]))
        rows.append(torch.stack(row))
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# GLoRIA's released local loss: the speed / memory baseline
# ---------------------------------------------------------------------------------------------
def _gloria_attention(query: torch.Tensor, context: torch.Tensor, temp1: float) -> torch.Tensor:
    """GLoRIA's ``attention_fn``: query (B, D, T) words, context (B, D, R) regions -> (B, D, T).

    Softmax over words for each region, × temp1, softmax over regions for each word, then the
    attention-weighted region context of each word.
    """
    batch, n_words = query.shape[0], query.shape[2]
    n_regions = context.shape[2]
    context_t = context.transpose(1, 2).contiguous()  # (B, R, D)
    attn = torch.bmm(context_t, query)  # (B, R, T)
    attn = torch.softmax(attn.view(batch * n_regions, n_words), dim=-1)
    attn = attn.view(batch, n_regions, n_words).transpose(1, 2).contiguous().view(batch * n_words, n_regions)
    attn = torch.softmax(attn * temp1, dim=-1).view(batch, n_words, n_regions)
    return torch.bmm(context, attn.transpose(1, 2).contiguous())  # (B, D, T)


def gloria_loop_loss(
    img_feats: torch.Tensor,
    word_feats: torch.Tensor,
    cap_lens: Sequence[int] | torch.Tensor,
    attention_scale: float = 4.0,
    pooling_scale: float = 5.0,
    logit_scale: float = 10.0,
) -> torch.Tensor:
    """GLoRIA's local contrastive loss, structured as its released ``local_loss``.

    For each caption j: its cap_lens[j] words are repeated over the B images, attended in the full
    feature dimension, cosine with the words, pooled by log Σ_k exp(γ s_k); the columns are stacked
    into a (B, B) similarity, × ``logit_scale``, and a symmetric cross-entropy with the diagonal as
    targets is returned (mean of the two directions).

    As in GLoRIA's code the pooled value is *not* divided by γ, so its logits are γ× those of
    ``GloriaPoolingScorer``; the cost, which is what this function is for, is the same.

    Args:
        img_feats: (B, R, D) region features (GLoRIA: the 19×19 grid of 768-d features).
        word_feats: (B, T, D) word features, the first cap_lens[j] rows of report j are valid.
        cap_lens: (B,) number of valid words per report.

    Returns:
        scalar loss.
    """
    batch = img_feats.shape[0]
    context = img_feats.transpose(1, 2)  # (B, D, R): GLoRIA's channel-first layout
    similarities = []
    for j in range(word_feats.shape[0]):
        n_words = int(cap_lens[j])
        word = word_feats[j, :n_words].t().unsqueeze(0).contiguous()  # (1, D, T_j)
        word = word.repeat(batch, 1, 1)  # (B, D, T_j): GLoRIA materialises the copies
        wei_context = _gloria_attention(word, context, attention_scale)  # (B, D, T_j)
        word = word.transpose(1, 2).contiguous().view(batch * n_words, -1)
        wei_context = wei_context.transpose(1, 2).contiguous().view(batch * n_words, -1)
        row_sim = F.cosine_similarity(word, wei_context, dim=1, eps=1e-8).view(batch, n_words)
        row_sim = torch.log(torch.exp(row_sim * pooling_scale).sum(dim=1, keepdim=True))  # (B, 1)
        similarities.append(row_sim)
    similarities = torch.cat(similarities, dim=1) * logit_scale  # (B images, B captions)
    labels = torch.arange(batch, device=img_feats.device)
    return 0.5 * (F.cross_entropy(similarities, labels) + F.cross_entropy(similarities.t(), labels))
