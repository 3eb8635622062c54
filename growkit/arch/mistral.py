"""Mistral: Llama's weights and layout; every layer attends within ``sliding_window``.

The window is one config field shared by all layers, so growth keeps it and
every fixed method grows a Mistral model exactly as it grows a Llama model.
"""
from __future__ import annotations

from transformers import MistralForCausalLM, MistralModel

from .llama import LlamaAdapter


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    model_type = "mistral"
    head_class, base_class = MistralForCausalLM, MistralModel
    # a window shorter than the test texts, so that a grown model that lost it would show
    tiny = {**LlamaAdapter.tiny, "sliding_window": 6}
