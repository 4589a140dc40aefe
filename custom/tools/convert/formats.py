"""The source checkpoint formats convert-checkpoint reads (GLoRIA, MGCA), the mapping constants,
and its error type."""

from __future__ import annotations


from dataclasses import dataclass


SOURCES = ("gloria", "mgca")
TEXT_SHIFT = 50.0  # identity through GELU for features > -44 (BERT hidden states stay far above)
IMAGE_SHIFT = 6.0  # pooled ReLU features are >= 0: GELU(x + 6) - 6 = x to < 1e-8
RELU_SCALE = 1000.0  # ReLU(z) ~ GELU(s z) / s
BN_EPS = 1e-5  # torch BatchNorm1d default (eps is not stored in state dicts)


class CheckpointConversionError(ValueError):
    """A source checkpoint cannot be read or converted; the message says why and what to pass."""


@dataclass(frozen=True)
class SourceFormat:
    """Where a source keeps its towers and heads (relative to the LightningModule root)."""

    name: str
    image_tower: str
    text_tower: str
    temperature_note: str
    paper: str
    input_note: str
    mean: float = 0.5
    std: float = 0.5


FORMATS = {
    "gloria": SourceFormat(
        "gloria", "img_encoder.model.", "text_encoder.model.",
        "attention 4, word pooling 5, local and global logits x10 (fixed)",
        "Huang et al., GLoRIA, ICCV 2021 (github.com/marshuang80/gloria)",
        "3-channel gray, mean/std 0.5, 224 px crops upsampled to 299 inside the encoder",
    ),
    "mgca": SourceFormat(
        "mgca", "img_encoder_q.model.", "text_encoder_q.model.",
        "global logits / 0.07 (fixed)",
        "Wang et al., MGCA, NeurIPS 2022 (github.com/HKU-MedAI/MGCA)",
        "3-channel gray, mean/std 0.5, 224 px crops upsampled to 299 inside the encoder",
    ),
}
