"""A throw-away family: Llama's weight table under a new model type, in this one file.

It states only what :class:`growkit.arch.Adapter` says a family must set and
:func:`register` is one line, so every command working on it shows that no
other module holds a family fact. The HF classes are Llama's, renamed.
"""
from __future__ import annotations

from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, LlamaModel

from growkit.arch import Adapter, register_adapter
from growkit.arch.base import TINY_TOKENS
from growkit.arch.llama import LlamaAdapter

TOY = "toyllama"


class ToyConfig(LlamaConfig):
    model_type = TOY


class ToyForCausalLM(LlamaForCausalLM):
    config_class = ToyConfig


class ToyModel(LlamaModel):
    config_class = ToyConfig


class ToyAdapter(Adapter):
    family = model_type = TOY
    head_class, base_class = ToyForCausalLM, ToyModel
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                intermediate_size=64, vocab_size=64, max_position_embeddings=32, **TINY_TOKENS)
    layer_entries = LlamaAdapter.layer_entries
    global_entries = LlamaAdapter.global_entries


def register() -> None:
    """The one registry line (and HF's own, so that ``AutoConfig`` reads the saved config)."""
    AutoConfig.register(TOY, ToyConfig, exist_ok=True)
    register_adapter(ToyAdapter())
