"""The two-tower model: encoders, projection heads, position codes and the local scorer."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils import as_bool, as_choice
from .image_encoder import ImageEncoder
from .scales import LogScale
from .scorers import GloriaPoolingScorer, LocalScorer, RelationScorer
from .text_encoder import TextEncoder

OBJECTIVES = ("reclf", "gloria", "convirt")


class ProjectionHead(nn.Module):
    """Two-layer MLP to the joint space (ConVIRT-style); L2 normalisation is left to the caller."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GridPositionCode(nn.Module):
    """Learned 2-D position codes p_r for an h × w region grid (bilinearly resized to any grid).

    CNN features are nearly translation-equivariant, so without this "left" and "right" cannot
    be told apart by attention alone.
    """

    def __init__(self, dim: int = 32, base_grid: int = 8) -> None:
        super().__init__()
        self.grid = nn.Parameter(torch.randn(1, dim, base_grid, base_grid) * 0.02)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Returns (h·w, dim), row-major like the flattened feature grid."""
        grid = self.grid
        if grid.shape[-2:] != (height, width):
            grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        return grid.flatten(2)[0].t()


class RECLFModel(nn.Module):
    """Image and report towers with global and local heads; one class for all three objectives.

    Args:
        image_encoder: an :class:`ImageEncoder`. text_encoder: a :class:`TextEncoder`.
        objective: ``reclf`` | ``gloria`` | ``convirt`` (global term only: no local modules).
        embed_dim: D_g of the global joint space. local_dim: D_l of regions/words (≤ 256 keeps the
            B² local term cheap). position_dim: Dp of the position codes. match_dim: D_m.
        srm, irm, srm_layers, srm_heads, srm_word_bias: RECLF relation modules.
        srm_locality: > 0 biases SRM attention by −γ·(word distance), γ learnable, initialised to
            this (a departure from DESIGN §2, off by default; docs/results.md "Evidence").
        gloria_pooling: ``sum`` (GLoRIA) | ``mean`` for the GLoRIA objective.
        local_negatives: ``all`` (B² pairs) | ``topk`` (positive + K hardest global negatives).
        topk: K.
        global_scale, local_scale, attention_scale, pooling_scale: initial scales
            (1/0.07, 10, 4, 5). learn_scales: learn them (clamped to [1, 100]).
        chunk_pairs, chunk_elements, checkpoint_chunks: memory bound of the local term (pairs per
            chunk, or by default as many as fit pairs × regions × words ≤ ``chunk_elements``).

    Forward (training): images (B, 1, H, W), input_ids / attention_mask / word_ids (B, L),
    report_ids (B,) integer keys of the normalised reports. Returns a dict with
    ``image_global``, ``text_global`` (B, D_g) L2-normalised, ``global_scale``, and for local
    objectives ``local_logits`` (B, B) or the ``row_/col_`` top-K logits and masks.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        objective: str = "reclf",
        embed_dim: int = 128,
        local_dim: int = 128,
        position_dim: int = 32,
        match_dim: int = 64,
        srm: bool | str = True,
        irm: bool | str = True,
        srm_layers: int = 1,
        srm_heads: int = 2,
        srm_word_bias: bool | str = True,
        gloria_pooling: str = "sum",
        local_negatives: str = "all",
        topk: int = 4,
        global_scale: float = 1 / 0.07,
        local_scale: float = 10.0,
        attention_scale: float = 4.0,
        pooling_scale: float = 5.0,
        learn_scales: bool | str = True,
        chunk_pairs: int | None = None,
        chunk_elements: int = 2**22,
        checkpoint_chunks: bool | str = True,
        srm_locality: float = 0.0,
    ) -> None:
        super().__init__()
        self.objective = as_choice(objective, OBJECTIVES, "objective")
        self.local_negatives = as_choice(local_negatives, ("all", "topk"), "local_negatives")
        self.topk = int(topk)
        learn_scales = as_bool(learn_scales, "learn_scales")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = ProjectionHead(image_encoder.global_channels, embed_dim)
        self.text_projection = ProjectionHead(text_encoder.hidden_size, embed_dim)
        self.global_scale = LogScale(global_scale, learnable=learn_scales)
        self.frozen_modules: list[str] = []  # set by custom.nets.freezing.freeze_parts
        self.scorer: LocalScorer | None = None
        if self.objective != "convirt":
            self.region_projection = nn.Conv2d(image_encoder.local_channels, local_dim, kernel_size=1)
            self.word_projection = nn.Linear(text_encoder.hidden_size, local_dim)
            self.local_scale = LogScale(local_scale, learnable=learn_scales)
            if self.objective == "reclf":
                self.position_code = GridPositionCode(position_dim)
                self.position_projection = nn.Linear(position_dim, local_dim)
                self.scorer = RelationScorer(
                    local_dim, position_dim, match_dim, srm=as_bool(srm, "srm"), irm=as_bool(irm, "irm"),
                    srm_layers=srm_layers, srm_heads=srm_heads, srm_word_bias=as_bool(srm_word_bias, "srm_word_bias"),
                    attention_scale=attention_scale, learn_scales=learn_scales, chunk_pairs=chunk_pairs,
                    checkpoint_chunks=as_bool(checkpoint_chunks, "checkpoint_chunks"), chunk_elements=chunk_elements,
                    srm_locality=float(srm_locality),
                )
            else:
                self.scorer = GloriaPoolingScorer(
                    attention_scale, pooling_scale, as_choice(gloria_pooling, ("sum", "mean"), "gloria_pooling"),
                    learn_scales=learn_scales, chunk_pairs=chunk_pairs,
                    checkpoint_chunks=as_bool(checkpoint_chunks, "checkpoint_chunks"), chunk_elements=chunk_elements,
                )

    def train(self, mode: bool = True) -> "RECLFModel":
        """As ``nn.Module.train``, but frozen parts stay in eval mode (fixed batch-norm statistics,
        no dropout): a frozen part is a fixed function."""
        super().train(mode)
        for name in self.frozen_modules:
            self.get_submodule(name).eval()
        return self

    # ---- towers -------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, local: bool = True) -> dict[str, torch.Tensor]:
        """images (B, 1, H, W) -> ``global`` (B, D_g) normalised; ``regions`` (B, R, D_l) and
        ``positions`` (R, Dp) (RECLF only) when the objective has a local term."""
        feats = self.image_encoder(images)
        out = {"global": F.normalize(self.image_projection(feats["global"]), dim=-1)}
        if local and self.scorer is not None:
            grid = self.region_projection(feats["local"])  # (B, D_l, h, w)
            h, w = grid.shape[-2:]
            out["grid_size"] = (h, w)
            regions = grid.flatten(2).transpose(1, 2)  # (B, R, D_l), row-major
            if self.objective == "reclf":
                positions = self.position_code(h, w)
                regions = regions + self.position_projection(positions)
                out["positions"] = positions
            out["regions"] = regions
        return out

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor, local: bool = True
    ) -> dict[str, torch.Tensor]:
        """(B, L) token tensors -> ``global`` (B, D_g) normalised; ``words`` (B, W, D_l), ``word_mask``."""
        feats = self.text_encoder(input_ids, attention_mask, word_ids)
        out = {"global": F.normalize(self.text_projection(feats["global"]), dim=-1)}
        if local and self.scorer is not None:
            out["words"] = self.word_projection(feats["words"])
            out["word_mask"] = feats["word_mask"]
        return out

    def local_similarity(self, image: dict, text: dict) -> torch.Tensor:
        """S_local for every image × report of two encoded sets: (B_i, B_t) (unscaled)."""
        if self.scorer is None:
            raise ValueError("objective 'convirt' has no local similarity")
        return self.scorer.score_all(image["regions"], image.get("positions"), text["words"], text["word_mask"])

    def matched_pair_details(self, image: dict, text: dict) -> dict[str, torch.Tensor | None]:
        """The intermediate tensors of S_local for each matched pair (image b with report b).

        The scorer's own ``score_groups(..., details=True)`` on the top-K group layout (G = B
        pairs, Nv = Ne = 1), so what is shown is exactly what the loss computes; the training
        path does not go through here.

        Args:
            image: :meth:`encode_image` output for B images. text: :meth:`encode_text` for B reports.

        Returns:
            ``score`` (B,) S_local(b, b); ``attention`` (B, T, R) word→region α (sums to 1 over R;
            padded word slots hold values that mean nothing); ``word_similarity`` (B, T) s_k;
            ``importance`` (B, T) IRM β (uniform over valid words when ``irm`` is off; None for
            GLoRIA); ``srm_attention`` (B, heads, T, T) the last SRM layer's word→word attention
            (None without SRM); ``word_mask`` (B, T).
        """
        if self.scorer is None:
            raise ValueError("objective 'convirt' has no local matchings: no word→region attention to show")
        words, word_mask = text["words"], text["word_mask"]
        score, details = self.scorer.score_groups(
            image["regions"].unsqueeze(1), image.get("positions"), words.unsqueeze(1), word_mask.unsqueeze(1),
            details=True,
        )

        def pair(name: str) -> torch.Tensor | None:
            value = details.get(name)
            return None if value is None else value[:, 0, 0]

        return {
            "score": score[:, 0, 0], "attention": pair("attention"), "word_similarity": pair("word_similarity"),
            "importance": pair("importance"), "srm_attention": pair("srm_attention"), "word_mask": word_mask,
        }

    # ---- training forward -----------------------------------------------------------------
    def encode(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-pair features of a batch: everything :meth:`contrast` needs, nothing across pairs.

        Returns ``image_global``, ``text_global`` (B, D_g) and for local objectives ``regions``
        (B, R, D_l), ``words`` (B, W, D_l), ``word_mask`` (B, W), ``grid_size`` (h, w), and
        ``positions`` (R, Dp) for RECLF. Gradient accumulation caches these for the whole effective
        batch (:mod:`custom.accumulation`), so every pair of it meets every other in the loss.
        """
        image = self.encode_image(images)
        text = self.encode_text(input_ids, attention_mask, word_ids)
        feats = {"image_global": image["global"], "text_global": text["global"]}
        if self.scorer is not None:
            feats.update(regions=image["regions"], words=text["words"], word_mask=text["word_mask"],
                         grid_size=image["grid_size"])
            if "positions" in image:
                feats["positions"] = image["positions"]
        return feats

    def contrast(self, feats: dict[str, torch.Tensor], report_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The loss inputs of a batch from :meth:`encode`'s features (all pairs of the batch).

        ``positions`` may be absent (a cached batch): they depend on parameters only and are
        recomputed here, so their gradient reaches the position code directly.
        """
        out = {"image_global": feats["image_global"], "text_global": feats["text_global"],
               "global_scale": self.global_scale()}
        if self.scorer is None:
            return out
        regions, words, word_mask = feats["regions"], feats["words"], feats["word_mask"]
        positions = feats.get("positions")
        if positions is None and self.objective == "reclf":
            positions = self.position_code(*feats["grid_size"])
        scale = self.local_scale()
        if self.local_negatives == "all":
            out["local_logits"] = scale * self.scorer.score_all(regions, positions, words, word_mask)
            return out
        if report_ids is None:
            report_ids = torch.arange(regions.shape[0], device=regions.device)
        same = report_ids.view(-1, 1) == report_ids.view(1, -1)
        cand = self.scorer.score_topk(
            regions, positions, words, word_mask, feats["image_global"] @ feats["text_global"].t(), same, self.topk
        )
        out.update(
            local_row_logits=scale * cand["row_scores"], local_row_valid=cand["row_valid"],
            local_col_logits=scale * cand["col_scores"], local_col_valid=cand["col_valid"],
        )
        return out

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor,
        report_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.contrast(self.encode(images, input_ids, attention_mask, word_ids), report_ids)
