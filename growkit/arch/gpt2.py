"""GPT-2: Conv1D weights are already in x out; Q, K and V are fused in ``c_attn``."""
from __future__ import annotations

import warnings

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from .base import TINY_TOKENS, Adapter, Entry, linear, norm

LAYER = "h.{i}."


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_type = "gpt2"
    head_class, base_class = GPT2LMHeadModel, GPT2Model
    tiny = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **TINY_TOKENS)
    gated_mlp = False
    learned_positions = True
    head_dim_from_hidden = True
    supports_gqa = False
    ffn_field = "n_inner"
    layer_entries = (
        *norm("layer.norm1", LAYER + "ln_1"),
        *linear("layer.o", LAYER + "attn.c_proj", layout="raw"),
        *norm("layer.norm2", LAYER + "ln_2"),
        *linear("layer.mlp_in", LAYER + "mlp.c_fc", layout="raw"),
        *linear("layer.mlp_out", LAYER + "mlp.c_proj", layout="raw"),
    )
    global_entries = (
        Entry("tok_emb", "wte.weight"),
        Entry("pos_emb", "wpe.weight"),
        *norm("final_norm", "ln_f"),
        Entry("lm_head", "lm_head.weight", "linear", head=True),
    )

    def target_config(self, config: GPT2Config, sizes: dict[str, int], flags: dict[str, str] | None = None) -> GPT2Config:
        target = super().target_config(config, sizes, flags)
        if config.scale_attn_by_inverse_layer_idx and target.n_layer != config.n_layer:
            warnings.warn(
                "scale_attn_by_inverse_layer_idx=True scales layer l's attention scores by 1/(l+1), so a layer "
                "copied to another depth computes something else: no depth growth preserves the function",
                stacklevel=2,
            )
        return target

    def ffn_size(self, config: GPT2Config) -> int:
        return config.n_inner or 4 * config.n_embd

    def extra_to_canonical(self, sd, prefix, config):
        n = config.n_layer
        out = {}
        for suffix, tail in (("weight", ""), ("bias", "_bias")):
            fused = torch.stack([sd[f"{prefix}h.{i}.attn.c_attn.{suffix}"] for i in range(n)])
            for name, part in zip("qkv", fused.chunk(3, dim=-1)):
                out[f"layer.{name}{tail}"] = part.clone()
        return out

    def extra_from_canonical(self, tensors, prefix, config):
        out = {}
        for suffix, tail in (("weight", ""), ("bias", "_bias")):
            fused = torch.cat([tensors[f"layer.{name}{tail}"] for name in "qkv"], dim=-1)
            for i in range(config.n_layer):
                out[f"{prefix}h.{i}.attn.c_attn.{suffix}"] = fused[i]
        return out
