"""A byte-level BPE trained on the run's own text, and strict local loading.

Byte-level BPE has no unknown tokens, trains on 5 MB in about a second and
keeps the vocabulary small (4k) so the LM head does not dominate the compute
of small models. One tokenizer serves every text family: it carries an
end-of-text token for causal LMs and [PAD]/[CLS]/[SEP]/[MASK] for BERT's MLM.
"""
from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from ..core.errors import GrowError

EOS, PAD, CLS, SEP, MASK = "<|endoftext|>", "[PAD]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (EOS, PAD, CLS, SEP, MASK)
_BYTE_ALPHABET = 256


def text_chunks(text: str) -> list[str]:
    """Paragraphs with their separators kept, so ``"".join`` gives ``text`` back (for batch encoding)."""
    return [c for c in re.split(r"(?<=\n\n)", text) if c]


def train_bpe(text: str, vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """A byte-level BPE with ``vocab_size`` entries (special tokens included) trained on ``text``."""
    minimum = _BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise GrowError(f"vocab_size={vocab_size} is too small for a byte-level BPE; use at least {minimum}")
    if not text.strip():
        raise GrowError("cannot train a tokenizer on empty text")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text_chunks(text), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
    )


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a model folder (``tokenizer.json``), read locally, never with remote code."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise GrowError(f"{folder} has no tokenizer.json (save one with tokenizer.save_pretrained)")
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # a corrupt file surfaces as many exception types
        detail = " ".join(str(err).split())
        raise GrowError(f"cannot load the tokenizer in {folder} (corrupt tokenizer.json?): {type(err).__name__}: {detail}") from None


def check_vocab(tokenizer: PreTrainedTokenizerFast, config: PretrainedConfig) -> None:
    """Refuse a tokenizer whose ids would index past the model's embedding table."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise GrowError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}; "
            f"use a tokenizer with at most {vocab} tokens (e.g. train one with vocab_size={vocab})"
        )


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of ``text``, encoded paragraph by paragraph (several times faster than one long string)."""
    backend = tokenizer.backend_tokenizer
    ids: list[int] = []
    for enc in backend.encode_batch(text_chunks(text), add_special_tokens=False):
        ids.extend(enc.ids)
    return ids
