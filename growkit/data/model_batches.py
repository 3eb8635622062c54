"""How examples become model-ready batches: causal-LM labels, BERT's masking, and the fixed evaluation set.

Shared by the in-memory data (:mod:`growkit.data.batches`) and the tokens
folders (:mod:`growkit.data.token_stream`), so both give the models the same
kind of batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from ..core.errors import GrowError

Batch = dict[str, torch.Tensor]
MLM_PROB, MASK_FRAC, RANDOM_FRAC = 0.15, 0.8, 0.1


@dataclass(frozen=True)
class Masker:
    """BERT's masking: 15% of ordinary tokens are predicted; of those 80% -> [MASK], 10% random, 10% kept."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]

    def __call__(self, ids: torch.Tensor, generator: torch.Generator) -> Batch:
        chosen = torch.rand(ids.shape, generator=generator) < MLM_PROB
        chosen &= ~torch.isin(ids, torch.tensor(self.special_ids))
        action = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=generator)
        inputs = torch.where(chosen & (action < MASK_FRAC), self.mask_id, ids)
        inputs = torch.where(chosen & (action >= MASK_FRAC) & (action < MASK_FRAC + RANDOM_FRAC), random_ids, inputs)
        return {
            "input_ids": inputs,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
            "labels": torch.where(chosen, ids, -100),
        }


def masker_for(tokenizer: PreTrainedTokenizerFast) -> Masker:
    """The masking of ``tokenizer``'s ids; refused when it lacks BERT's special tokens."""
    missing = [name for name in ("mask_token", "cls_token", "sep_token") if getattr(tokenizer, name) is None]
    if missing:
        raise GrowError(f"BERT's masked-LM objective needs a tokenizer with a {', '.join(missing)}")
    return Masker(tokenizer.mask_token_id, len(tokenizer), tuple(tokenizer.all_special_ids))


def frame(body: torch.Tensor, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """BERT rows: ``[CLS] body [SEP]``."""
    cls = torch.full((len(body), 1), tokenizer.cls_token_id, dtype=body.dtype)
    sep = torch.full((len(body), 1), tokenizer.sep_token_id, dtype=body.dtype)
    return torch.cat([cls, body, sep], dim=1)


def model_batch(examples: Batch, masker: Masker | None, generator: torch.Generator) -> Batch:
    """The model-ready batch (labels, masks) for some stacked examples."""
    if masker is not None:
        return masker(examples["input_ids"], generator)
    if "input_ids" in examples:
        return {"input_ids": examples["input_ids"], "labels": examples["input_ids"]}
    return dict(examples)


def spread(n: int, count: int) -> torch.Tensor:
    """At most ``count`` indices evenly spaced over ``range(n)``, so a small eval set covers the whole split."""
    return torch.arange(n) if n <= count else torch.linspace(0, n - 1, count).round().long()


def eval_set(examples: Batch, batch_size: int, masker: Masker | None, seed: int) -> list[Batch]:
    """The fixed evaluation batches of some held-out examples (BERT's masks drawn once, from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(next(iter(examples.values())))
    return [model_batch({k: v[rows] for k, v in examples.items()}, masker, generator)
            for rows in torch.arange(n).split(batch_size)]
