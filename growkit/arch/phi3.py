"""Phi-3: Llama-like, with q, k and v fused in ``qkv_proj`` and gate and up fused in ``gate_up_proj``.

The fused weights are cut into the canonical roles along their output axis
(q | k | v and gate | up) and joined again on the way back. Phi-3's config has
no ``head_dim`` field: head_dim is hidden / heads, so growth adds whole heads of
the same size.
"""
from __future__ import annotations

import torch
from transformers import Phi3ForCausalLM, Phi3Model

from ..core.canonical import ROLE_SPECS, parse_axis
from .base import TINY_TOKENS, linear, norm
from .llama import ATTN, LAYER, MLP, LlamaAdapter

#: fused HF key -> the canonical roles it holds, in output order
FUSED = {ATTN + "qkv_proj.weight": ("layer.q", "layer.k", "layer.v"),
         MLP + "gate_up_proj.weight": ("layer.mlp_gate", "layer.mlp_in")}


class Phi3Adapter(LlamaAdapter):
    family = "phi3"
    model_type = "phi3"
    head_class, base_class = Phi3ForCausalLM, Phi3Model
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=64, max_position_embeddings=32,
                original_max_position_embeddings=32, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                **TINY_TOKENS)
    head_dim_from_hidden = True
    layer_entries = (
        *norm("layer.norm1", LAYER + "input_layernorm", bias=False),
        *linear("layer.o", ATTN + "o_proj", bias=False),
        *norm("layer.norm2", LAYER + "post_attention_layernorm", bias=False),
        *linear("layer.mlp_out", MLP + "down_proj", bias=False),
    )

    def extra_to_canonical(self, sd, prefix, config):
        dims = self.dims(config)
        out = {}
        for key, roles in FUSED.items():
            fused = torch.stack([sd[prefix + key.format(i=i)] for i in range(dims.layers)])  # L x out x in
            sizes = [dims.axis(parse_axis(ROLE_SPECS[role][-1])[0]) for role in roles]
            for role, part in zip(roles, fused.split(sizes, dim=1)):
                out[role] = part.transpose(1, 2).clone()
        return out

    def extra_from_canonical(self, tensors, prefix, config):
        out = {}
        for key, roles in FUSED.items():
            fused = torch.cat([tensors[role] for role in roles], dim=-1)  # L x in x out
            for i in range(fused.shape[0]):
                out[prefix + key.format(i=i)] = fused[i].t()
        return out

