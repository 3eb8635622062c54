"""Task data: one deterministic train stream and one fixed held-out set per run.

Every consumer (``train``, the learned-operator ``fit``, the benchmark, the CLI)
takes batches from a :class:`TaskData`, so all runs of a comparison see the same
data order and are scored on the same evaluation batches. Examples are kept
as stacked tensors and a batch is an index into them, which makes the stream
cheap, repeatable for a seed, and endless (it reshuffles every epoch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from ..arch import IMAGE, MASKED, adapter_for, family_adapter
from ..core.errors import GrowError
from ..resumable.folder import digest_tensors
from .corpus import embedded_text, read_text
from .images import digits, image_folder
from .model_batches import Batch, Masker, eval_set, frame, masker_for, model_batch, spread
from .token_folder import is_token_folder
from .token_stream import TokenTaskData, token_task_data
from .tokenizer import check_vocab, encode, train_bpe

@dataclass
class TaskData:
    """Training examples stacked on dim 0, the fixed evaluation batches, and how to make a batch.

    ``examples`` holds ``input_ids`` rows (text) or ``pixel_values`` and ``labels``
    (images). ``masker`` is set for BERT: train batches are masked afresh from the
    stream's generator; eval batches were masked once, when they were built.
    """

    family: str
    batch_size: int
    examples: Batch
    eval_batches: list[Batch] = field(default_factory=list)
    tokenizer: PreTrainedTokenizerFast | None = None
    masker: Masker | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return len(next(iter(self.examples.values())))

    def to_batch(self, examples: Batch, generator: torch.Generator) -> Batch:
        """The model-ready batch (labels, masks) for some stacked examples."""
        return model_batch(examples, self.masker, generator)

    def train_batches(self, seed: int = 0, start: int = 0) -> Iterator[Batch]:
        """Endless full batches, the same sequence for the same ``seed``; each epoch is a new shuffle.

        ``start`` skips that many batches, leaving the stream exactly where a
        stream that yielded them would be (a resumed run continues the same
        data order). Skipping replays only the generator: one shuffle per
        epoch, plus the masking draws of each skipped batch for BERT.
        """
        if start < 0:
            raise GrowError(f"start must not be negative, got {start}")
        generator = torch.Generator().manual_seed(seed)
        n, b = self.num_train, self.batch_size
        per_epoch = n // b
        while True:
            order = torch.randperm(n, generator=generator)
            if start >= per_epoch and self.masker is None:  # a whole epoch skipped: only its shuffle is drawn
                start -= per_epoch
                continue
            for first in range(0, n - b + 1, b):
                if start and self.masker is None:
                    start -= 1
                    continue
                rows = order[first : first + b]
                examples = {k: v[rows] for k, v in self.examples.items()}
                if start:
                    start -= 1
                    self.to_batch(examples, generator)  # BERT: draw what the skipped batch drew
                    continue
                yield self.to_batch(examples, generator)


def _windows(ids: torch.Tensor, length: int) -> torch.Tensor:
    """Non-overlapping rows of ``length`` tokens (a tail that does not fill a row is dropped)."""
    n = len(ids) // length
    return ids[: n * length].view(n, length)


def _finish(data: TaskData, eval_examples: Batch, eval_batches: int, seed: int, unit: str) -> TaskData:
    """Pick the eval examples, build the fixed eval batches, and refuse data too small to use."""
    n_eval = len(next(iter(eval_examples.values())))
    if data.num_train < data.batch_size:
        raise GrowError(
            f"the data gives {data.num_train} training {unit}, fewer than one batch of {data.batch_size}; "
            "use more data or a smaller batch size"
        )
    if n_eval < 1:
        raise GrowError(f"the data is too small to hold out any evaluation {unit}; use more data")
    keep = spread(n_eval, eval_batches * data.batch_size)
    data.eval_batches = eval_set({k: v[keep] for k, v in eval_examples.items()}, data.batch_size, data.masker, seed)
    data.info.update(train=data.num_train, eval=len(keep), unit=unit)
    return data


def _text_task(family, text, tokenizer, seq_len, batch_size, eval_fraction, eval_batches, seed) -> TaskData:
    ids = torch.tensor(encode(tokenizer, text), dtype=torch.long)
    n_eval = int(len(ids) * eval_fraction)
    splits = ids[: len(ids) - n_eval], ids[len(ids) - n_eval :]
    masker = None
    if family_adapter(family).objective == MASKED:
        masker = masker_for(tokenizer)

        def rows(part: torch.Tensor) -> torch.Tensor:
            return frame(_windows(part, seq_len - 2), tokenizer)

    else:

        def rows(part: torch.Tensor) -> torch.Tensor:
            return _windows(part, seq_len)

    data = TaskData(family, batch_size, {"input_ids": rows(splits[0])}, tokenizer=tokenizer, masker=masker)
    data.info["tokens"] = len(ids)
    return _finish(data, {"input_ids": rows(splits[1])}, eval_batches, seed, f"sequences of {seq_len} tokens")


def _image_task(family, path, image_size, channels, batch_size, eval_fraction, eval_batches, seed) -> TaskData:
    if path is None:
        if channels != 1:
            raise GrowError(f"the built-in digits are greyscale (1 channel); the model expects {channels}")
        images, labels = digits(image_size)
        classes = [str(i) for i in range(10)]
    else:
        images, labels, classes = image_folder(path, image_size, channels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))  # the split ignores file order
    images, labels = images[order], labels[order]
    n_train = len(labels) - int(len(labels) * eval_fraction)
    mean, std = images[:n_train].mean(), images[:n_train].std()
    images = (images - mean) / std
    data = TaskData(family, batch_size, {"pixel_values": images[:n_train], "labels": labels[:n_train]})
    data.info["classes"] = classes
    return _finish(data, {"pixel_values": images[n_train:], "labels": labels[n_train:]}, eval_batches, seed, "images")


def build_task_data(
    family: str,
    *,
    text: str | None = None,
    path: str | Path | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
    config: PretrainedConfig | None = None,
    seq_len: int = 128,
    batch_size: int = 16,
    image_size: int = 32,
    vocab_size: int = 4096,
    eval_fraction: float = 0.1,
    eval_batches: int = 8,
    seed: int = 0,
) -> TaskData:
    """The train stream and held-out batches for ``family`` (any registered family: its objective decides).

    Text comes from ``text``, else ``path`` (see :func:`read_text`), else the
    embedded corpus; the last ``eval_fraction`` of its tokens is held out and at
    most ``eval_batches`` batches of it, spread over the split, form the eval set.
    A ``path`` that is a tokens folder (``growkit tokenize``) is streamed from
    disk instead, with the held-out split recorded in it (see :func:`token_task_data`).
    Without a ``tokenizer`` a byte-level BPE of ``vocab_size`` (capped at the
    model's) is trained on the text. ViT uses the digits (or an image folder at
    ``path``), shuffled once before the split. Given a ``config``, sizes
    are checked against it and the ViT image size and channels are taken from it.
    ``seed`` fixes the held-out choices (MLM eval masks, image split), not the train order.
    """
    adapter = family_adapter(family)
    if config is not None and adapter_for(config) is not adapter:
        raise GrowError(f"the data is for {family} but the model config is {adapter_for(config).family}")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("image_size", image_size), ("eval_batches", eval_batches)):
        if value < 1:
            raise GrowError(f"{name} must be positive, got {value}")
    if not 0 < eval_fraction < 1:
        raise GrowError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    if adapter.objective == IMAGE:
        channels = 1
        if config is not None:
            image_size, channels = config.image_size, config.num_channels
        data = _image_task(family, path, image_size, channels, batch_size, eval_fraction, eval_batches, seed)
        if config is not None and len(data.info["classes"]) > config.num_labels:
            raise GrowError(f"the data has {len(data.info['classes'])} classes but the model has num_labels={config.num_labels}")
        return data
    if adapter.objective == MASKED and seq_len < 3:
        raise GrowError(f"{family} sequences need seq_len >= 3 ([CLS] text [SEP])")
    if config is not None:
        limit = adapter.max_positions(config)
        if limit is not None and seq_len > limit:
            raise GrowError(f"seq_len={seq_len} exceeds the model's {limit} positions")
    if text is None and path is not None and is_token_folder(path):
        return token_task_data(family, path, tokenizer=tokenizer, config=config, seq_len=seq_len,
                               batch_size=batch_size, eval_batches=eval_batches, seed=seed)
    if text is None:
        text = read_text(path) if path is not None else embedded_text()
    if tokenizer is None:
        tokenizer = train_bpe(text, min(vocab_size, config.vocab_size) if config is not None else vocab_size)
    if config is not None:
        check_vocab(tokenizer, config)
    return _text_task(family, text, tokenizer, seq_len, batch_size, eval_fraction, eval_batches, seed)


def data_digest(data: TaskData | TokenTaskData | list | tuple) -> str | None:
    """What a run's data is, for its identity: the examples and eval batches (tokenised, so the tokenizer
    counts too), or the batches of a list. None for a stream that cannot be read twice.

    A tokens folder is named by the digest of its index (which holds every
    shard's sha256 and the tokenizer's), not by reading gigabytes of tokens.
    """
    if isinstance(data, TokenTaskData):
        index = torch.frombuffer(bytearray(bytes.fromhex(data.corpus.digest)), dtype=torch.uint8)
        return digest_tensors({"index": index, "eval": data.eval_batches, "batch_size": torch.tensor(data.batch_size)})
    if isinstance(data, TaskData):
        return digest_tensors({"train": data.examples, "eval": data.eval_batches,
                               "batch_size": torch.tensor(data.batch_size)})
    if isinstance(data, (list, tuple)):
        return digest_tensors(list(data))
    return None
