"""Image x text scores of a pretrained model, shared by zero-shot classification and
cross-modal retrieval: ½(s_g·cos(g, t) + s_l·S_local) with the trained scales (DESIGN §3)."""

from __future__ import annotations

import torch

from ..nets.factory import unwrap
from ..nets.scorers import GloriaPoolingScorer
from ..utils import as_choice
from .encode import ImageItems, encode_images, encode_texts


SCORES = ("combined", "global", "local")


class PairScorer:
    """Image × text scores of a pretrained model (the formula in the module docstring).

    Args:
        model: a :class:`RECLFModel` (eval mode, on ``device``). tokenizer: its tokenizer.
        device: where scoring runs.
        score: ``combined`` (½ of the two scaled terms) | ``global`` | ``local``. A ConVIRT model
            has no local term: ``combined`` falls back to global (see :attr:`description`).
        batch_size: images / texts per encoder batch. image_chunk: images whose local grids are
            held at once (their scores against every text are computed, then the grids dropped).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, device: str | torch.device, score: str = "combined",
                 batch_size: int = 64, image_chunk: int = 512, amp: bool = False, max_length: int = 128) -> None:
        self.model, self.tokenizer = unwrap(model).eval(), tokenizer
        self.device = torch.device(device)
        self.batch_size, self.image_chunk, self.amp, self.max_length = int(batch_size), int(image_chunk), amp, max_length
        score = as_choice(score, SCORES, "score")
        has_local = self.model.scorer is not None
        if score == "local" and not has_local:
            raise ValueError(f"score 'local': a {self.model.objective!r} checkpoint has no local similarity")
        self.mode = score if has_local else "global"
        with torch.no_grad():
            self.global_scale = float(self.model.global_scale())
            self.local_scale = float(self.model.local_scale()) if has_local else float("nan")
        # GLoRIA sum pooling grows with log(#words): compare phrases of different lengths fairly
        scorer = self.model.scorer
        self.length_correct = isinstance(scorer, GloriaPoolingScorer) and scorer.pooling == "sum"

    @property
    def description(self) -> str:
        """What the scores are, for the output JSON."""
        local = "s_l*(S_local - log(n_words))" if self.length_correct else "s_l*S_local"
        if self.mode == "global":
            why = " (convirt checkpoint: no local term)" if self.model.scorer is None else ""
            return f"global only{why}: s_g*cos(g_image, g_text), s_g={self.global_scale:.4g}"
        if self.mode == "local":
            return f"local only: {local} ({self.model.objective}), s_l={self.local_scale:.4g}"
        return (f"combined: 0.5*(s_g*cos(g_image, g_text) + {local}) ({self.model.objective} local similarity), "
                f"trained scales s_g={self.global_scale:.4g}, s_l={self.local_scale:.4g}")

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Encode texts once: ``global`` (T, D_g), and ``words``/``word_mask`` for the local term."""
        return encode_texts(self.model, self.tokenizer, texts, self.device, self.batch_size,
                            local=self.mode != "global", max_length=self.max_length, amp=self.amp)

    @torch.no_grad()
    def score(self, images: ImageItems, texts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of every image against every encoded text.

        Args:
            images: the decoded images (N items). texts: from :meth:`encode_texts` (T texts).

        Returns:
            (N, T) float32 scores on the CPU; each image is encoded once.
        """
        local = self.mode != "global"
        text_global = texts["global"].to(self.device)
        if local:
            text_local = {"words": texts["words"].to(self.device), "word_mask": texts["word_mask"].to(self.device)}
            n_words = texts["word_mask"].sum(1).clamp_min(1).float().to(self.device)  # (T,)
        scores = []
        for start in range(0, len(images), self.image_chunk):
            subset = torch.utils.data.Subset(images, range(start, min(start + self.image_chunk, len(images))))
            enc = encode_images(self.model, subset, self.device, self.batch_size, local=local, amp=self.amp)
            part = self.global_scale * (enc["global"].to(self.device) @ text_global.t())  # (n, T)
            if local:
                image_local = {"regions": enc["regions"].to(self.device)}
                if "positions" in enc:
                    image_local["positions"] = enc["positions"].to(self.device)
                s_local = self.model.local_similarity(image_local, text_local).float()  # (n, T), chunked inside
                if self.length_correct:
                    s_local = s_local - n_words.log().view(1, -1)
                s_local = self.local_scale * s_local
                part = s_local if self.mode == "local" else 0.5 * (part + s_local)
            scores.append(part.float().cpu())
        return torch.cat(scores)
