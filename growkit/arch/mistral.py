"""Mistral: Llama's weights and layout; every layer attends within ``sliding_window``.

The window is one config field shared by all layers, so growth keeps it and
every fixed method grows a Mistral model exactly as it grows a Llama model.
"""
from __future__ import annotations

from transformers import MistralForCausalLM, MistralModel

from .base import TINY_TOKENS
from .llama import LlamaAdapter


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    model_type = "mistral"
    head_class, base_class = MistralForCausalLM, MistralModel
    # a window shorter than the test texts, so that a grown model that lost it would show
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                intermediate_size=64, vocab_size=64, max_position_embeddings=32, sliding_window=6,
                attention_dropout=0.0, **TINY_TOKENS)
