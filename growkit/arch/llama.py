"""Llama: ``LlamaForCausalLM`` and ``LlamaModel`` (pre-RMSNorm, SwiGLU, RoPE, GQA).

head_dim is its own config field here (it need not be hidden/heads), so growth
keeps it and changes the number of heads; ``write_dims`` always writes it,
because HF would otherwise derive it again from hidden_size/num_attention_heads.
Biases (``attention_bias``, ``mlp_bias``) are mapped when the config has them.
"""
from __future__ import annotations

from transformers import LlamaConfig

from ..core.canonical import Dims
from ..core.errors import GrowError
from .base import Adapter, Entry

LAYER = "layers.{i}."
ATTN = LAYER + "self_attn."
MLP = LAYER + "mlp."


class LlamaAdapter(Adapter):
    family = "llama"
    model_type = "llama"
    head_dim_from_hidden = False
    supports_gqa = True
    layer_entries = (
        Entry("layer.norm1", LAYER + "input_layernorm.weight", ("D.out",)),
        Entry("layer.q", ATTN + "q_proj.weight", ("D.in", "Q.out"), layout="linear"),
        Entry("layer.q_bias", ATTN + "q_proj.bias", ("Q.out",)),
        Entry("layer.k", ATTN + "k_proj.weight", ("D.in", "K.out"), layout="linear"),
        Entry("layer.k_bias", ATTN + "k_proj.bias", ("K.out",)),
        Entry("layer.v", ATTN + "v_proj.weight", ("D.in", "K.out"), layout="linear"),
        Entry("layer.v_bias", ATTN + "v_proj.bias", ("K.out",)),
        Entry("layer.o", ATTN + "o_proj.weight", ("Q.in", "D.out"), layout="linear"),
        Entry("layer.o_bias", ATTN + "o_proj.bias", ("D.out",)),
        Entry("layer.norm2", LAYER + "post_attention_layernorm.weight", ("D.out",)),
        Entry("layer.mlp_gate", MLP + "gate_proj.weight", ("D.in", "F.out"), layout="linear"),
        Entry("layer.mlp_gate_bias", MLP + "gate_proj.bias", ("F.out",)),
        Entry("layer.mlp_in", MLP + "up_proj.weight", ("D.in", "F.out"), layout="linear"),
        Entry("layer.mlp_in_bias", MLP + "up_proj.bias", ("F.out",)),
        Entry("layer.mlp_out", MLP + "down_proj.weight", ("F.in", "D.out"), layout="linear"),
        Entry("layer.mlp_out_bias", MLP + "down_proj.bias", ("D.out",)),
    )
    global_entries = (
        Entry("tok_emb", "embed_tokens.weight", ("V", "D.out")),
        Entry("final_norm", "norm.weight", ("D.out",)),
        Entry("lm_head", "lm_head.weight", ("D.in", "V"), layout="linear", head=True),
    )

    def dims(self, config: LlamaConfig) -> Dims:
        hidden, heads = config.hidden_size, config.num_attention_heads
        return Dims(
            hidden=hidden,
            ffn=config.intermediate_size,
            heads=heads,
            kv_heads=config.num_key_value_heads or heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
            layers=config.num_hidden_layers,
        )

    def write_dims(self, config: LlamaConfig, dims: Dims) -> None:
        config.hidden_size, config.intermediate_size = dims.hidden, dims.ffn
        config.num_attention_heads, config.num_key_value_heads = dims.heads, dims.kv_heads
        config.head_dim = dims.head_dim  # explicit, or HF re-derives it from hidden/heads
        config.num_hidden_layers = dims.layers
        self.check_config(config)  # the config's own validators only run on construction

    def check_config(self, config: LlamaConfig) -> None:
        hidden, heads = config.hidden_size, config.num_attention_heads
        kv_heads = config.num_key_value_heads or heads
        if heads % kv_heads:
            raise GrowError(f"num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}")
        if hidden % heads:
            # LlamaConfig's own validator requires it, even though head_dim is a separate field
            raise GrowError(f"num_attention_heads={heads} does not divide hidden_size={hidden}")

    def tied_specs(self, specs):
        return {"final_norm": ("D.in",)}
