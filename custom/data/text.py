"""Report text: normalisation, tokenizer preparation (local HF folder or WordPiece trained on the
training reports) and the tokenisation that maps sub-word tokens to word indices."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import string
from collections.abc import Iterable, Sequence

import numpy as np

from ..utils import as_int, as_optional_path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_PUNCT = set(string.punctuation)
_SPACES = re.compile(r"\s+")


def normalize_report(text: str) -> str:
    """Lower-case, collapse whitespace: two reports equal after this are the same positive."""
    return _SPACES.sub(" ", str(text).strip().lower())


def report_key(text: str) -> int:
    """A stable 63-bit integer id of the normalised report (identical reports share it)."""
    digest = hashlib.blake2b(normalize_report(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def train_wordpiece(reports: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2):
    """Build a lower-casing BERT WordPiece tokenizer from ``reports`` (the offline text default).

    The vocabulary is the special tokens, every character seen (word-initial and ``##``
    continuation, so nothing is ever [UNK]) and the most frequent whole words (ties broken
    alphabetically) up to ``vocab_size``. ``tokenizers``' own WordPiece trainer breaks ties in
    hash-map order, so two runs on the same reports gave different vocabularies, and an exactly
    reproducible (resumable) run needs the same token ids every time.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for report in reports:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(str(report))))
    chars = sorted({ch for word in counts for ch in word})
    base = SPECIAL_TOKENS + chars + [f"##{ch}" for ch in chars]
    words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= int(min_frequency)]
    words = [w for w in words if w not in set(base)][: max(0, int(vocab_size) - len(base))]
    vocab = {token: i for i, token in enumerate(base + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", do_lower_case=True,
    )


def prepare_tokenizer(
    text_encoder: str | None,
    reports: Sequence[str] | None,
    save_dir: str,
    init_ckpt: str | None = None,
    reuse_saved: bool = False,
    vocab_size: int = 2000,
):
    """Return the tokenizer a run uses. It writes nothing: the tokenizer is saved with the weights
    (``text/`` of the checkpoint, :func:`custom.checkpoints.write_checkpoint`) when a run has
    produced something, so a run that fails before that leaves an existing ``save_dir`` as it was.

    Priority: ``init_ckpt``'s ``text/`` folder (the weights were trained with it) > a local Hugging
    Face folder ``text_encoder`` > ``save_dir`` when resuming (``reuse_saved``: the tokenizer saved
    with the checkpoint being resumed) > a WordPiece vocabulary trained on ``reports``. Nothing is
    downloaded: paths must exist locally.
    """
    from transformers import AutoTokenizer

    init_ckpt = as_optional_path(init_ckpt)
    text_encoder = as_optional_path(text_encoder)
    if init_ckpt is not None:
        source = os.path.join(os.path.dirname(os.path.abspath(init_ckpt)), "text")
        if not os.path.isdir(source):
            raise FileNotFoundError(f"init_ckpt {init_ckpt!r} has no text/ folder beside it (not a reclf checkpoint?)")
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    elif text_encoder is not None:
        if not os.path.isdir(text_encoder):
            raise FileNotFoundError(
                f"text_encoder {text_encoder!r} is not a local folder: give the path of a downloaded "
                "Hugging Face model (e.g. Bio_ClinicalBERT), or '' for the built-in small BERT"
            )
        tokenizer = AutoTokenizer.from_pretrained(text_encoder, local_files_only=True)
    elif reuse_saved and os.path.isfile(os.path.join(save_dir, "tokenizer.json")):
        tokenizer = AutoTokenizer.from_pretrained(save_dir, local_files_only=True)
    else:
        if not reports:
            raise ValueError("no training reports to build a vocabulary from: check the datalist")
        tokenizer = train_wordpiece(reports, vocab_size=vocab_size)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the tokenizer must be a fast (Rust) tokenizer: word alignment needs word_ids()")
    cap_model_max_length(tokenizer, text_encoder, init_ckpt)
    return tokenizer


# positions of the built-in small BERT (custom.nets.text_encoder.build_text_model's default)
SMALL_BERT_POSITIONS = 512
# transformers' "no limit" sentinel for model_max_length (int(1e30))
_NO_LIMIT = 10**18


def cap_model_max_length(tokenizer, text_encoder: str | None = None, init_ckpt: str | None = None) -> None:
    """Make ``tokenizer.model_max_length`` the real token limit of the text model it feeds: the
    smaller of the tokenizer's own limit and the model's ``max_position_embeddings`` (a longer
    input would index past the position table). :func:`encode_reports` caps ``max_length`` by it."""
    from transformers import AutoConfig

    source = None
    if as_optional_path(init_ckpt):
        source = os.path.join(os.path.dirname(os.path.abspath(init_ckpt)), "text")
    elif as_optional_path(text_encoder):
        source = text_encoder
    positions = SMALL_BERT_POSITIONS
    if source is not None and os.path.isfile(os.path.join(source, "config.json")):
        positions = getattr(AutoConfig.from_pretrained(source, local_files_only=True), "max_position_embeddings", None)
    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < _NO_LIMIT else None
    if positions:
        limit = min(limit or positions, int(positions))
    if limit:
        tokenizer.model_max_length = int(limit)


def token_limit(tokenizer, max_length: int) -> int:
    """``max_length`` capped by the tokenizer's limit (logged once when it is lowered)."""
    max_length = as_int(max_length, "max_length")
    if max_length < 3:
        raise ValueError(f"max_length: expected at least 3 tokens ([CLS] word [SEP]), got {max_length}")
    limit = tokenizer.model_max_length
    if limit and limit < _NO_LIMIT and max_length > limit:
        key = (id(tokenizer), max_length)
        if key not in _CAPPED:
            _CAPPED.add(key)
            logging.getLogger("reclf").warning(
                "max_length %d exceeds the text model's limit of %d tokens: using %d", max_length, limit, limit
            )
        return int(limit)
    return max_length


_CAPPED: set[tuple[int, int]] = set()


def encode_reports(tokenizer, reports: Sequence[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """Tokenise reports and map every token to the index of the word it belongs to.

    Returns ``input_ids`` and ``attention_mask`` (N, L) and ``word_ids`` (N, L) with -1 for special
    tokens, padding and punctuation-only words (which carry no finding or location), word
    indices renumbered 0..W-1 per report. Padded to the longest report (at most ``max_length``,
    itself capped by the tokenizer's limit, see :func:`token_limit`).
    """
    enc = tokenizer(
        [normalize_report(r) for r in reports], max_length=token_limit(tokenizer, max_length), truncation=True,
        padding="longest", return_offsets_mapping=True,
    )
    input_ids = np.asarray(enc["input_ids"], dtype=np.int64)
    word_ids = np.full(input_ids.shape, -1, dtype=np.int64)
    for n, text in enumerate(reports):
        text = normalize_report(text)
        remap: dict[int, int] = {}
        for t, w in enumerate(enc.word_ids(n)):
            if w is None:
                continue
            if w not in remap:
                start, end = enc.word_to_chars(n, w)
                keep = not all(ch in _PUNCT for ch in text[start:end])
                remap[w] = sum(v >= 0 for v in remap.values()) if keep else -1
            word_ids[n, t] = remap[w]
    return {
        "input_ids": input_ids,
        "attention_mask": np.asarray(enc["attention_mask"], dtype=np.int64),
        "word_ids": word_ids,
    }
