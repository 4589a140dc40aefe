"""Networks: image and text encoders, the local matching scorers and the RECLF model."""

from .image_encoder import ImageEncoder
from .text_encoder import TextEncoder

__all__ = ["ImageEncoder", "TextEncoder"]
