"""Qwen2: Llama's layout with biases on q, k and v (none on o or the MLP).

The biases map to the canonical ``q_bias``/``k_bias``/``v_bias`` through Llama's
table (roles whose keys a model lacks are skipped). ``layer_types`` lists one
attention type per layer; growth extends it when every layer has the same type
and refuses depth growth otherwise (see :meth:`Adapter.grown_layer_types`).
"""
from __future__ import annotations

from transformers import Qwen2ForCausalLM, Qwen2Model

from .llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"
    model_type = "qwen2"
    head_class, base_class = Qwen2ForCausalLM, Qwen2Model
