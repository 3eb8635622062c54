"""Qwen3: Llama's layout plus an RMSNorm on each query and key head (``q_norm``, ``k_norm``).

The per-head norms act over head_dim, which growth never changes, and one gain
vector serves every head: new heads use it as it is, so every width operator
keeps it (canonical roles ``layer.q_norm``/``layer.k_norm``, axis ``H``, never grown).
"""
from __future__ import annotations

from transformers import Qwen3ForCausalLM, Qwen3Model

from .base import norm
from .llama import ATTN, LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"
    model_type = "qwen3"
    head_class, base_class = Qwen3ForCausalLM, Qwen3Model
    layer_entries = (
        *LlamaAdapter.layer_entries,
        *norm("layer.q_norm", ATTN + "q_norm", bias=False),
        *norm("layer.k_norm", ATTN + "k_norm", bias=False),
    )
