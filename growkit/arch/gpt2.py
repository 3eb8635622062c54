"""GPT-2: Conv1D weights are already in x out; Q, K and V are fused in ``c_attn``."""
from __future__ import annotations

import torch
from transformers import GPT2Config

from ..core.canonical import Dims
from .base import Adapter, Entry

LAYER = "h.{i}."


class GPT2Adapter(Adapter):
    family = "gpt2"
    model_type = "gpt2"
    layer_entries = (
        Entry("layer.norm1", LAYER + "ln_1.weight", ("D.out",)),
        Entry("layer.norm1_bias", LAYER + "ln_1.bias", ("D.out",)),
        Entry("layer.o", LAYER + "attn.c_proj.weight", ("Q.in", "D.out")),
        Entry("layer.o_bias", LAYER + "attn.c_proj.bias", ("D.out",)),
        Entry("layer.norm2", LAYER + "ln_2.weight", ("D.out",)),
        Entry("layer.norm2_bias", LAYER + "ln_2.bias", ("D.out",)),
        Entry("layer.mlp_in", LAYER + "mlp.c_fc.weight", ("D.in", "F.out")),
        Entry("layer.mlp_in_bias", LAYER + "mlp.c_fc.bias", ("F.out",)),
        Entry("layer.mlp_out", LAYER + "mlp.c_proj.weight", ("F.in", "D.out")),
        Entry("layer.mlp_out_bias", LAYER + "mlp.c_proj.bias", ("D.out",)),
    )
    global_entries = (
        Entry("tok_emb", "wte.weight", ("V", "D.out")),
        Entry("pos_emb", "wpe.weight", ("P", "D.out")),
        Entry("final_norm", "ln_f.weight", ("D.out",)),
        Entry("final_norm_bias", "ln_f.bias", ("D.out",)),
        Entry("lm_head", "lm_head.weight", ("D.in", "V"), layout="linear", head=True),
    )

    def dims(self, config: GPT2Config) -> Dims:
        hidden = config.n_embd
        return Dims(
            hidden=hidden,
            ffn=config.n_inner or 4 * hidden,
            heads=config.n_head,
            kv_heads=config.n_head,
            head_dim=hidden // config.n_head,
            layers=config.n_layer,
        )

    def write_dims(self, config: GPT2Config, dims: Dims) -> None:
        config.n_embd, config.n_inner = dims.hidden, dims.ffn
        config.n_head, config.n_layer = dims.heads, dims.layers

    def check_config(self, config: GPT2Config) -> None:
        from ..core.errors import GrowError

        if config.n_embd % config.n_head:
            raise GrowError(f"n_head={config.n_head} does not divide n_embd={config.n_embd}")

    def extra_specs(self) -> dict[str, tuple[str, ...]]:
        return {
            "layer.q": ("L", "D.in", "Q.out"),
            "layer.k": ("L", "D.in", "K.out"),
            "layer.v": ("L", "D.in", "K.out"),
            "layer.q_bias": ("L", "Q.out"),
            "layer.k_bias": ("L", "K.out"),
            "layer.v_bias": ("L", "K.out"),
        }

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

    def tied_specs(self, specs):
        return {"final_norm": ("D.in",), "final_norm_bias": ("D.in",)}
