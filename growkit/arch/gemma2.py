"""Gemma 2: a Llama-like decoder with four quirks that the canonical view absorbs.

- **(1 + w) norms.** Gemma's RMSNorm multiplies by ``1 + w``. The canonical view
  holds the effective gain ``g = 1 + w`` (computed in fp32, as HF's forward does),
  so the operators that rescale or split gains (zero-extension, tiling and
  Net2Net of a tied final norm) stay right. Back, ``w = g - 1``: the model
  computes bit for bit what the source computed, but ``w``'s bits below fp32's
  resolution of ``1 + w`` (which the forward never reads) are not kept.
- **Pre- and post-norms.** Each branch is normalised before (``norm1``,
  ``norm2``) and after (``layer.post_attn_norm``, ``layer.post_mlp_norm``, on the
  branch's output). A silenced branch outputs zero and its post-norm keeps it
  zero, so identity layers stay exact; zero-extension rescales the post-norms'
  gains like every other gain.
- **Embeddings scaled by sqrt(hidden).** HF multiplies the token embedding by
  ``sqrt(D)``, which changes with the width. The canonical view records the
  source's scale (``extra["embed_scale"]``); a model of width D2 gets
  ``E * sqrt(D1 / D2)``, so its residual stream starts where the operator put
  it. With tied embeddings the LM head reads that smaller E, so the final norm's
  gain is divided by the same factor and the logits are unchanged.
- **Alternating sliding/global layers.** ``layer_types`` alternates. A fixed
  method's grown model gives each layer its source layer's type (a copy keeps
  its attention span, so the pattern may stop alternating); a learned
  operator's target keeps the stacked pattern (layer l: type of l mod L1).
- Soft-capping of attention scores and logits acts per head and on the logits,
  which exact growth keeps, so it is kept as it is.
"""
from __future__ import annotations

import math

from transformers import Gemma2ForCausalLM, Gemma2Model

from ..core.canonical import Canonical
from .base import linear, norm
from .llama import ATTN, LAYER, MLP, LlamaAdapter

#: every canonical norm gain, stored in HF as w with the effective gain 1 + w
NORMS = ("layer.norm1", "layer.post_attn_norm", "layer.norm2", "layer.post_mlp_norm", "final_norm")


class Gemma2Adapter(LlamaAdapter):
    family = "gemma2"
    model_type = "gemma2"
    head_class, base_class = Gemma2ForCausalLM, Gemma2Model
    # a window shorter than the test texts, so that a layer with the wrong attention type would show
    tiny = {**LlamaAdapter.tiny, "sliding_window": 4, "query_pre_attn_scalar": 8}
    layer_entries = (
        *norm("layer.norm1", LAYER + "input_layernorm", bias=False),
        *linear("layer.q", ATTN + "q_proj"),
        *linear("layer.k", ATTN + "k_proj"),
        *linear("layer.v", ATTN + "v_proj"),
        *linear("layer.o", ATTN + "o_proj"),
        *norm("layer.post_attn_norm", LAYER + "post_attention_layernorm", bias=False),
        *norm("layer.norm2", LAYER + "pre_feedforward_layernorm", bias=False),
        *linear("layer.mlp_gate", MLP + "gate_proj"),
        *linear("layer.mlp_in", MLP + "up_proj"),
        *linear("layer.mlp_out", MLP + "down_proj"),
        *norm("layer.post_mlp_norm", LAYER + "post_feedforward_layernorm", bias=False),
    )

    def canonical_facts(self, config):
        return {**super().canonical_facts(config), "embed_scale": math.sqrt(config.hidden_size)}

    def to_canonical(self, model) -> Canonical:
        canon = super().to_canonical(model)
        for name in NORMS:
            canon.tensors[name] = 1.0 + canon.tensors[name]
        return canon

    def hf_state_dict(self, tensors, model, tied, extra=None):
        """Gains back to ``w``; the embedding (and a tied head's final gain) rescaled to this model's width."""
        hidden = model.config.hidden_size
        ratio = (extra or {}).get("embed_scale", math.sqrt(hidden)) / math.sqrt(hidden)
        raw = dict(tensors)
        if ratio != 1.0:
            raw["tok_emb"] = tensors["tok_emb"] * ratio
            if tied:
                raw["final_norm"] = tensors["final_norm"] / ratio
        for name in NORMS:
            if name in raw:
                raw[name] = raw[name] - 1.0
        return super().hf_state_dict(raw, model, tied, extra)
