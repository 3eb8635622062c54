"""Batches drawn from a tokens folder: windows at seeded random offsets, read from the shard files.

Nothing of the corpus is loaded: a batch reads ``batch_size`` windows from the
shards (through the page cache that every process of a run shares), so memory
does not grow with the corpus and no process holds a copy of it. Batch ``step`` of seed ``s`` depends on ``(s, step)`` only, so
every process draws the same global batch, and a resumed run starts at its step
without replaying anything. The evaluation windows are fixed, spread over the
held-out blocks (see :class:`~growkit.data.token_folder.HeldOut`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from ..arch import IMAGE, MASKED, family_adapter
from ..core.errors import GrowError
from .model_batches import Batch, Masker, eval_set, frame, masker_for, model_batch, spread
from .pretokenize import tokenizer_digest
from .token_folder import TOKENIZER_DIR, TokenCorpus
from .tokenizer import check_vocab, load_tokenizer

_SEED_SPACE = 1 << 64


@dataclass
class TokenTaskData:
    """A run's data from a tokens folder: the same interface as :class:`~growkit.data.batches.TaskData`."""

    family: str
    batch_size: int
    corpus: TokenCorpus
    seq_len: int
    tokenizer: PreTrainedTokenizerFast
    masker: Masker | None = None
    eval_batches: list[Batch] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def window(self) -> int:
        """Tokens read per row (BERT's rows add [CLS] and [SEP])."""
        return self.seq_len - 2 if self.masker is not None else self.seq_len

    def rows(self, positions: list[int]) -> torch.Tensor:
        """The rows that start at these stream positions, as int64 ids."""
        ids = torch.from_numpy(np.stack([self.corpus.read(p, self.window) for p in positions]).astype(np.int64))
        return frame(ids, self.tokenizer) if self.masker is not None else ids

    def train_batches(self, seed: int = 0, start: int = 0) -> Iterator[Batch]:
        """Endless batches, batch ``k`` a function of ``(seed, k)`` only; ``start`` begins at batch ``start``."""
        if start < 0:
            raise GrowError(f"start must not be negative, got {start}")
        held, window = self.corpus.heldout, self.window
        starts = held.train_starts(window)
        step = start
        while True:
            rng = np.random.default_rng([seed % _SEED_SPACE, step])
            picks = rng.integers(0, starts, size=self.batch_size)
            examples = {"input_ids": self.rows([held.train_position(int(u), window) for u in picks])}
            generator = torch.Generator().manual_seed(int(rng.integers(1 << 62)))  # BERT's masks
            yield model_batch(examples, self.masker, generator)
            step += 1


def token_task_data(
    family: str,
    folder: str | Path,
    *,
    tokenizer: PreTrainedTokenizerFast | None,
    config: PretrainedConfig | None,
    seq_len: int,
    batch_size: int,
    eval_batches: int,
    seed: int,
) -> TokenTaskData:
    """The train stream and held-out batches of the tokens folder ``folder``.

    ``tokenizer`` (the model's) must be the one the folder was tokenized with;
    without one the folder's own copy is used.
    """
    objective = family_adapter(family).objective
    if objective == IMAGE:
        raise GrowError(f"{folder} holds text tokens; {family} trains on 'digits' or an image folder")
    corpus = TokenCorpus(folder)
    if tokenizer is None:
        tokenizer = load_tokenizer(corpus.folder / TOKENIZER_DIR)
    elif tokenizer_digest(tokenizer) != corpus.tokenizer_digest:
        raise GrowError(f"{folder} was tokenized with another tokenizer than the model's; tokenize the corpus "
                        "with this model's: growkit tokenize DATA --tokenizer MODEL_DIR --out TOKENS_DIR")
    if config is not None:
        check_vocab(tokenizer, config)
    masker = masker_for(tokenizer) if objective == MASKED else None
    data = TokenTaskData(family, batch_size, corpus, seq_len, tokenizer, masker)
    held, window = corpus.heldout, data.window
    if held.train_starts(window) < batch_size or held.eval_windows(window) < 1:
        raise GrowError(f"seq_len={seq_len} does not fit {folder}'s held-out blocks of {held.block} tokens "
                        f"({corpus.total} tokens in all); use a shorter --seq-len or more data")
    keep = spread(held.eval_windows(window), eval_batches * batch_size)
    examples = {"input_ids": data.rows([held.eval_position(int(w), window) for w in keep])}
    data.eval_batches = eval_set(examples, batch_size, masker, seed)
    data.info.update(tokens=corpus.total, train_tokens=held.train_tokens, eval=len(keep), index=corpus.digest,
                     unit=f"sequences of {seq_len} tokens")
    return data
