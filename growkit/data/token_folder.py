"""A tokens folder: token ids in raw, memory-mappable shard files, and a JSON index.

Layout (written by ``growkit tokenize``, see :mod:`growkit.data.pretokenize`)::

    TOKENS_DIR/index.json           what the shards hold; written last, so present means complete
    TOKENS_DIR/shards/00000.bin     token ids (uint16 when the vocabulary fits, else uint32, little-endian),
                                    every document followed by the end-of-text id
    TOKENS_DIR/shards/00000.json    that shard's record, written once the shard is whole
    TOKENS_DIR/job.json             the tokenize run's settings, so a rerun resumes only the same job
    TOKENS_DIR/tokenizer/           the tokenizer, so the folder is usable without its model

The shards, in index order, form one token stream. Its held-out split
(:class:`HeldOut`) is every k-th block of it, so evaluation text comes from all
over the corpus, not from its last file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..core.errors import GrowError

FORMAT, VERSION = "growkit-tokens", 1
INDEX_FILE, JOB_FILE, SHARD_DIR, TOKENIZER_DIR = "index.json", "job.json", "shards", "tokenizer"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
MIN_BLOCK, MAX_BLOCK = 256, 1 << 16
OPEN_SHARDS = 64  #: shard files kept open at once


def token_dtype(vocab_size: int) -> str:
    """The narrowest shard dtype that holds every id of a ``vocab_size`` vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass(frozen=True)
class HeldOut:
    """The held-out split: the stream is cut into groups of ``every`` blocks of ``block`` tokens; each group's last
    block is held out. The tokens after the last whole group (less than one group) are train text only, up to
    ``every - 1`` blocks; what follows them is held out too but not evaluated on.

    Train windows may span a group's train blocks but never touch a held-out block.
    """

    block: int
    every: int
    total: int

    @staticmethod
    def choose(total: int, eval_fraction: float) -> HeldOut:
        """About 16 held-out blocks of a power-of-two size in [256, 65536] tokens, for every ``1/eval_fraction``."""
        every = max(2, round(1 / eval_fraction))
        target = max(1, total // (every * 16))
        block = min(MAX_BLOCK, max(MIN_BLOCK, 1 << int(math.log2(target))))
        return HeldOut(block, every, total)

    @property
    def groups(self) -> int:
        return self.total // (self.block * self.every)

    def _tail_train(self) -> int:
        return min(self.total - self.groups * self.block * self.every, (self.every - 1) * self.block)

    @property
    def train_tokens(self) -> int:
        return self.groups * (self.every - 1) * self.block + self._tail_train()

    @property
    def eval_tokens(self) -> int:
        return self.total - self.train_tokens

    def train_starts(self, length: int) -> int:
        """How many train windows of ``length`` tokens there are (valid first positions)."""
        span = (self.every - 1) * self.block
        return self.groups * max(0, span - length + 1) + max(0, self._tail_train() - length + 1)

    def train_position(self, u: int, length: int) -> int:
        """The stream position of train window ``u`` (``0 <= u < train_starts(length)``)."""
        per_group = max(0, (self.every - 1) * self.block - length + 1)
        full = self.groups * per_group
        if u < full:
            return (u // per_group) * self.block * self.every + u % per_group
        return self.groups * self.block * self.every + (u - full)

    def eval_windows(self, length: int) -> int:
        """How many non-overlapping evaluation windows of ``length`` tokens the held-out blocks hold."""
        return self.groups * (self.block // length)

    def eval_position(self, w: int, length: int) -> int:
        per_block = self.block // length
        group, within = divmod(w, per_block)
        return group * self.block * self.every + (self.every - 1) * self.block + within * length


def is_token_folder(path: str | Path) -> bool:
    """Whether ``path`` is (or is becoming) a tokens folder rather than a corpus."""
    path = Path(path)
    return path.is_dir() and ((path / INDEX_FILE).is_file() or (path / JOB_FILE).is_file())


class TokenCorpus:
    """A finished tokens folder, opened: its index, and its shards read as one token stream."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            if (self.folder / JOB_FILE).is_file():
                raise GrowError(f"{self.folder} is an unfinished tokenization; rerun the same growkit tokenize command")
            raise GrowError(f"{self.folder} is not a tokens folder (no {INDEX_FILE})")
        raw = path.read_bytes()
        self.digest = hashlib.sha256(raw).hexdigest()
        try:
            self.index = json.loads(raw)
            if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
                raise ValueError(f"format {self.index.get('format')!r} version {self.index.get('version')!r}")
            self.dtype = DTYPES[self.index["dtype"]]
            shards = self.index["shards"]
            held = self.index["heldout"]
            self.heldout = HeldOut(int(held["block"]), int(held["every"]), int(self.index["tokens"]))
        except (ValueError, KeyError, TypeError) as err:
            raise GrowError(f"{path} is not a growkit tokens index ({type(err).__name__}: {err}); tokenize again") from None
        self.files = [self.folder / s["file"] for s in shards]
        self.counts = np.array([int(s["tokens"]) for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        for file, count in zip(self.files, self.counts):
            size = file.stat().st_size if file.is_file() else -1
            if size != count * self.dtype.itemsize:
                raise GrowError(f"{self.folder} is damaged: {file.name} should hold {count} tokens "
                                f"({count * self.dtype.itemsize} bytes) but has {max(size, 0)} bytes; tokenize again")
        if int(self.counts.sum()) != self.heldout.total:
            raise GrowError(f"{path} counts {self.heldout.total} tokens but its shards hold {int(self.counts.sum())}")
        self._files: OrderedDict[int, BinaryIO] = OrderedDict()

    @property
    def total(self) -> int:
        return self.heldout.total

    @property
    def tokenizer_digest(self) -> str:
        return self.index["tokenizer"]["digest"]

    def _file(self, shard: int) -> BinaryIO:
        """The shard, open for positioned reads (at most ``OPEN_SHARDS`` files stay open)."""
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            self._files[shard] = self.files[shard].open("rb", buffering=0)
            if len(self._files) > OPEN_SHARDS:
                self._files.popitem(last=False)[1].close()
        return self._files[shard]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``start .. start + length`` of the stream (they may span shards).

        Positioned reads (``pread``) from the page cache that every process
        shares: a memory map would count each page it touched as this
        process's resident memory, which grew by ~370 MB over 20 batches of
        a 700 MB folder (readahead and large folios map far more than a window).
        """
        if start < 0 or start + length > self.total:
            raise GrowError(f"tokens {start}..{start + length} lie outside the stream of {self.total}")
        out = np.empty(length, dtype=self.dtype)
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            at = start + filled - int(self.starts[shard])
            take = min(length - filled, int(self.counts[shard]) - at)
            if take > 0:
                size = self.dtype.itemsize
                chunk = os.pread(self._file(shard).fileno(), take * size, at * size)
                out[filled : filled + take] = np.frombuffer(chunk, dtype=self.dtype)
                filled += take
            shard += 1
        return out
