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
    if mode == "cosine":
        # the scale multiplies the small word tensor, not the (Nv·Ne·T·R) logits
        query = (scale * F.normalize(words, dim=-1)).reshape(g, 1, ne * t, d)
        logits = torch.matmul(query, F.normalize(regions, dim=-1).transpose(-1, -2))  # (G, Nv, Ne·T, R)
        return torch.softmax(logits, dim=-1)
    if mode != "gloria":
        raise ValueError(f"attention mode must be 'cosine' or 'gloria', got {mode!r}")
    logits = torch.matmul(words.reshape(g, 1, ne * t, d), regions.transpose(-1, -2)).view(g, nv, ne, t, r)
    over_words = masked_softmax(logits, word_mask.view(g, 1, ne, t, 1), dim=3)
    return torch.softmax(scale * over_words.view(g, nv, ne * t, r), dim=-1)


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
