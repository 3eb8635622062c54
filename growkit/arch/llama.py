"""Llama: ``LlamaForCausalLM`` and ``LlamaModel`` (pre-RMSNorm, SwiGLU, RoPE, GQA).

head_dim is its own config field here (it need not be hidden/heads), so growth
keeps it and changes the number of heads; ``write_dims`` always writes it,
because HF would otherwise derive it again from hidden_size/num_attention_heads.
Biases (``attention_bias``, ``mlp_bias``) are mapped when the config has them.
"""
from __future__ import annotations

from transformers import LlamaForCausalLM, LlamaModel

from .base import TINY_TOKENS, Adapter, Entry, linear, norm

LAYER = "layers.{i}."
ATTN = LAYER + "self_attn."
MLP = LAYER + "mlp."


class LlamaAdapter(Adapter):
    family = "llama"
    model_type = "llama"
    head_class, base_class = LlamaForCausalLM, LlamaModel
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                intermediate_size=64, vocab_size=64, max_position_embeddings=32, attention_dropout=0.0, **TINY_TOKENS)
    layer_entries = (
        *norm("layer.norm1", LAYER + "input_layernorm", bias=False),
        *linear("layer.q", ATTN + "q_proj"),
        *linear("layer.k", ATTN + "k_proj"),
        *linear("layer.v", ATTN + "v_proj"),
        *linear("layer.o", ATTN + "o_proj"),
        *norm("layer.norm2", LAYER + "post_attention_layernorm", bias=False),
        *linear("layer.mlp_gate", MLP + "gate_proj"),
        *linear("layer.mlp_in", MLP + "up_proj"),
        *linear("layer.mlp_out", MLP + "down_proj"),
    )
    global_entries = (
        Entry("tok_emb", "embed_tokens.weight"),
        *norm("final_norm", "norm", bias=False),
        Entry("lm_head", "lm_head.weight", "linear", head=True),
    )
