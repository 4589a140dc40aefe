"""Report encoder: a BERT-like Hugging Face model whose sub-word states are merged into words."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..utils import as_optional_path

# The offline default: a small BERT built from config (random init) over the WordPiece vocabulary
# trained on the training reports. Sized for 2 CPU cores; a real encoder comes from a local folder.
SMALL_BERT = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}


def build_text_model(text_encoder: str | None, tokenizer, max_positions: int = 512, **small_bert):
    """A Hugging Face encoder from a local folder (pretrained) or from config (random init).

    ``add_pooling_layer=False``: BERT's pooler is unused and makes DDP raise (DESIGN §7).
    """
    from transformers import AutoModel, BertConfig

    text_encoder = as_optional_path(text_encoder)
    if text_encoder is not None:
        if not os.path.isdir(text_encoder):
            raise FileNotFoundError(f"text_encoder {text_encoder!r} is not a local Hugging Face model folder")
        return AutoModel.from_pretrained(text_encoder, local_files_only=True, add_pooling_layer=False)
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=int(max_positions),
        pad_token_id=tokenizer.pad_token_id,
        **{**SMALL_BERT, **small_bert},
    )
    return build_text_model_from_config(config)


def build_text_model_from_config(config):
    """Random-init encoder from a Hugging Face config (used to rebuild a saved checkpoint)."""
    from transformers import AutoModel

    return AutoModel.from_config(config, add_pooling_layer=False)


def words_from_tokens(hidden: torch.Tensor, word_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pool sub-word states into words.

    Args:
        hidden: (B, L, H) token states.
        word_ids: (B, L) word index of each token, -1 for special tokens / padding / punctuation.

    Returns:
        words (B, W, H) with W = the most words of any report in the batch (padding trimmed), and
        word_mask (B, W) True where the word exists.
    """
    num_words = int(word_ids.max().item()) + 1 if word_ids.numel() else 0
    num_words = max(num_words, 1)
    slots = torch.arange(num_words, device=word_ids.device)
    assign = (word_ids.unsqueeze(1) == slots.view(1, -1, 1)).to(hidden.dtype)  # (B, W, L)
    counts = assign.sum(-1)
    words = torch.bmm(assign, hidden) / counts.clamp_min(1).unsqueeze(-1)
    return words, counts > 0


READOUTS = ("last", "mean", "sum")
POOLINGS = ("mean", "max", "cls")


class TextEncoder(nn.Module):
    """Wraps a Hugging Face encoder; returns a report vector and word states.

    Args:
        model: a Hugging Face encoder (``last_hidden_state``; ``hidden_states`` for multi-layer read-outs).
        pooling: the report vector: ``mean`` of the word states (informative from the first step,
            which a randomly initialised encoder's [CLS] is not), their element-wise ``max``
            (ConVIRT's max-pooling over the output vectors) or the ``cls`` state.
        readout: the token states read out: ``last`` layer, or the ``mean`` / ``sum`` of the last
            ``readout_layers`` layers (GLoRIA sums the last 4: lower layers of a pretrained BERT
            keep more lexical detail than the last, which is tuned to its pretraining task).
        readout_layers: k of the mean/sum read-outs (1 ≤ k ≤ number of layers).

    Forward:
        input_ids, attention_mask, word_ids: (B, L).
        returns ``global`` (B, H), ``words`` (B, W, H), ``word_mask`` (B, W).
    """

    def __init__(self, model: nn.Module, pooling: str = "mean", readout: str = "last", readout_layers: int = 1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"text_pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        readout = str(readout).strip().lower()
        if readout not in READOUTS:
            raise ValueError(f"text_readout must be one of {list(READOUTS)}, got {readout!r}")
        layers = int(getattr(model.config, "num_hidden_layers", 1))
        readout_layers = 1 if readout == "last" else int(readout_layers)
        if not 1 <= readout_layers <= layers:
            raise ValueError(f"text_readout_layers must be in 1..{layers} (the text tower's layers), got {readout_layers}")
        self.model = model
        self.pooling = pooling
        self.readout = readout
        self.readout_layers = readout_layers
        self.hidden_size = int(model.config.hidden_size)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, H): the read-out of the token states."""
        if self.readout == "last":
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        stacked = torch.stack(hidden[-self.readout_layers :], dim=0)  # hidden[0] is the embedding layer
        return stacked.sum(0) if self.readout == "sum" else stacked.mean(0)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        hidden = self.token_states(input_ids, attention_mask)
        words, word_mask = words_from_tokens(hidden, word_ids)
        if self.pooling == "cls":
            report = hidden[:, 0]
        elif self.pooling == "max":
            report = words.masked_fill(~word_mask.unsqueeze(-1), torch.finfo(words.dtype).min).amax(1)
        else:
            weights = word_mask.to(words.dtype)
            report = (words * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
        return {"global": report, "words": words, "word_mask": word_mask}
