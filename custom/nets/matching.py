"""Local matchings between image regions and report words, computed for groups of pairs at once.

Shapes use a "group" layout so one code path serves every batching pattern without copies:
``regions`` (G, Nv, R, D) and ``words`` (G, Ne, T, D) produce matchings for all Nv x Ne
image/report pairs inside each of the G groups:

- all B² pairs, one chunk of reports: G = 1, Nv = B images, Ne = chunk of reports;
- top-K per image: G = B, Nv = 1, Ne = K + 1 gathered reports;
- top-K per report: G = B, Nv = K + 1 gathered images, Ne = 1.

Every product is a batched matmul over (G, Nv); nothing loops over pairs or words.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = -1e4  # finite: a fully masked row must give zeros, not NaN (also safe in fp16)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` where ``mask`` is True; masked entries get exactly 0."""
    logits = logits.masked_fill(~mask, NEG_INF)
    return torch.softmax(logits, dim=dim) * mask


def region_attention(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    scale: torch.Tensor,
    mode: str = "cosine",
) -> torch.Tensor:
    """Word→region attention α for every pair of a group.

    Args:
        regions: (G, Nv, R, D) region features.
        words: (G, Ne, T, D) word features.
        word_mask: (G, Ne, T) valid words.
        scale: attention scale (RECLF: s_att; GLoRIA: the scale applied after the word softmax).
        mode: ``cosine``: α = softmax_r(scale · cos(e_k, v_r)) (our RECLF reading);
            ``gloria``: α = softmax_r(scale · softmax_k(<e_k, v_r>)), GLoRIA's released order.

    Returns:
        α with shape (G, Nv, Ne·T, R), normalised over the last (contiguous) axis R.
    """
    g, nv, r, d = regions.shape
    ne, t = words.shape[1], words.shape[2]
    if mode not in ("cosine", "gloria"):
        raise ValueError(f"attention mode must be 'cosine' or 'gloria', got {mode!r}")
    # One (G, Ne·T, D) x (G, D, Nv·R) product for all image/report pairs of a group. Written as a
    # matmul of a (G, 1, Ne·T, D) query against (G, Nv, R, D) regions, torch broadcasts the query
    # by *copying* it Nv times, and the backward materialises the (G, Nv, Ne·T, D) gradient
    # before summing it: D-sized traffic where only an R-sized (Nv, Ne·T, R) result is needed.
    if mode == "cosine":
        # the scale multiplies the small word tensor, not the (Nv·Ne·T·R) logits
        query = (scale * F.normalize(words, dim=-1)).reshape(g, ne * t, d)
        keys = F.normalize(regions, dim=-1)
    else:
        query, keys = words.reshape(g, ne * t, d), regions
    logits = torch.matmul(query, keys.reshape(g, nv * r, d).transpose(-1, -2)).view(g, ne * t, nv, r)
    if mode == "cosine":
        alpha = torch.softmax(logits, dim=-1)  # (G, Ne·T, Nv, R)
    else:
        over_words = masked_softmax(logits.view(g, ne, t, nv, r), word_mask.view(g, ne, t, 1, 1), dim=2)
        alpha = torch.softmax(scale * over_words.view(g, ne * t, nv, r), dim=-1)
    # (G, Nv, Ne·T, R) contiguous, the layout attend()'s per-image matmul reads (an R-sized copy)
    return alpha.transpose(1, 2).contiguous()


def attend(
    attention: torch.Tensor, regions: torch.Tensor, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention-weighted region context c_ijk (and attended position P_ijk).

    Args:
        attention: (G, Nv, Ne·T, R) from :func:`region_attention`.
        regions: (G, Nv, R, D).
        positions: optional (R, Dp) position codes p_r.

    Returns:
        context (G, Nv, Ne·T, D) and positions (G, Nv, Ne·T, Dp) or None.
    """
    g, nv, r, d = regions.shape
    values = regions
    if positions is not None:
        values = torch.cat([regions, positions.to(regions.dtype).expand(g, nv, r, -1)], dim=-1)
    mixed = torch.matmul(attention, values)  # (G, Nv, Ne·T, D [+Dp])
    if positions is None:
        return mixed, None
    return mixed[..., :d], mixed[..., d:]


def word_region_similarity(context: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """s_ijk = cos(c_ijk, e_jk): (G, Nv, Ne, T, D) x (G, Ne, T, D) -> (G, Nv, Ne, T)."""
    return (F.normalize(context, dim=-1) * F.normalize(words, dim=-1).unsqueeze(1)).sum(-1)
