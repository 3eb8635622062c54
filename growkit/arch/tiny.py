"""Tiny configs and models of every supported family, for tests, demos and the embedded default.

Dropout is off everywhere, so train and eval mode compute the same function, and
the special token ids lie inside the tiny vocabularies.
"""
from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from ..core.errors import GrowError

_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

_CONFIGS: dict[str, tuple[type[PretrainedConfig], dict]] = {
    "gpt2": (
        GPT2Config,
        dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_TOKENS),
    ),
    "bert": (
        BertConfig,
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=64,
             max_position_embeddings=32, type_vocab_size=2, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0, **_TOKENS),
    ),
    "vit": (
        ViTConfig,
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=8,
             patch_size=4, num_channels=1, num_labels=10, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0),
    ),
    "llama": (
        LlamaConfig,
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             intermediate_size=64, vocab_size=64, max_position_embeddings=32, attention_dropout=0.0, **_TOKENS),
    ),
}

#: (class with a head, bare base model) per family
MODEL_CLASSES: dict[str, tuple[type[PreTrainedModel], type[PreTrainedModel]]] = {
    "gpt2": (GPT2LMHeadModel, GPT2Model),
    "bert": (BertForMaskedLM, BertModel),
    "vit": (ViTForImageClassification, ViTModel),
    "llama": (LlamaForCausalLM, LlamaModel),
}


def tiny_config(family: str, **overrides) -> PretrainedConfig:
    """A tiny config of ``family`` (gpt2, bert, vit, llama); ``overrides`` are config fields."""
    if family not in _CONFIGS:
        raise GrowError(f"no tiny config for {family!r}; choose one of {', '.join(_CONFIGS)}")
    cls, defaults = _CONFIGS[family]
    return cls(**{**defaults, **overrides})


def tiny_model(family: str, head: bool = True, seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised tiny model (with its LM/classification head if ``head``), in eval mode."""
    config = tiny_config(family, **overrides)
    model_class = MODEL_CLASSES[family][0 if head else 1]
    torch.manual_seed(seed)
    return model_class(config).eval()
