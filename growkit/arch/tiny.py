"""Tiny models of every supported family, for tests, demos and the embedded default.

Each adapter holds its tiny config (``Adapter.tiny``): dropout off, so train and
eval mode compute the same function, and special token ids inside the vocabulary.
"""
from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from . import family_adapter


def tiny_config(family: str, **overrides) -> PretrainedConfig:
    """A tiny config of ``family`` (any registered family); ``overrides`` are config fields."""
    return family_adapter(family).tiny_config(**overrides)


def tiny_model(family: str, head: bool = True, seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised tiny model (with its LM/classification head if ``head``), in eval mode."""
    adapter = family_adapter(family)
    config = adapter.tiny_config(**overrides)
    torch.manual_seed(seed)
    return (adapter.head_class if head else adapter.base_class)(config).eval()
