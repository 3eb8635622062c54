"""BERT (post-LN encoder): ``BertForMaskedLM`` and ``BertModel``.

All projections are ``nn.Linear``. ``norm1`` is the LayerNorm after attention and
``norm2`` the one after the MLP (post-norms here, pre-norms in GPT-2 and Llama).

The MLM decoder's bias needs care in transformers 5: ``cls.predictions.bias`` and
``cls.predictions.decoder.bias`` are one parameter only when the word embeddings
are tied (they are tied through ``_tied_weights_keys``, which HF skips when
``tie_word_embeddings=False``). Untied, the decoder reads ``decoder.bias`` and
``cls.predictions.bias`` is a separate parameter that nothing reads. So
``lm_head_bias`` is always the bias the decoder adds, and an untied model's
unread ``cls.predictions.bias`` is kept as ``mlm_bias`` for an exact round trip.
"""
from __future__ import annotations

from transformers import BertConfig, BertForMaskedLM, BertModel

from ..core.errors import GrowError
from ..core.canonical import Dims
from .base import MASKED, TINY_TOKENS, Adapter, Entry, linear, norm

LAYER = "encoder.layer.{i}."
PRED = "cls.predictions."


class BertAdapter(Adapter):
    family = "bert"
    model_type = "bert"
    head_class, base_class = BertForMaskedLM, BertModel
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=64,
                max_position_embeddings=32, type_vocab_size=2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, **TINY_TOKENS)
    objective = MASKED
    gated_mlp = False
    learned_positions = True
    post_norm = True
    head_dim_from_hidden = True
    supports_gqa = False
    tied_norm = "head_norm"
    layer_entries = (
        *linear("layer.q", LAYER + "attention.self.query"),
        *linear("layer.k", LAYER + "attention.self.key"),
        *linear("layer.v", LAYER + "attention.self.value"),
        *linear("layer.o", LAYER + "attention.output.dense"),
        *norm("layer.norm1", LAYER + "attention.output.LayerNorm"),
        *linear("layer.mlp_in", LAYER + "intermediate.dense"),
        *linear("layer.mlp_out", LAYER + "output.dense"),
        *norm("layer.norm2", LAYER + "output.LayerNorm"),
    )
    global_entries = (
        Entry("tok_emb", "embeddings.word_embeddings.weight"),
        Entry("pos_emb", "embeddings.position_embeddings.weight"),
        Entry("type_emb", "embeddings.token_type_embeddings.weight"),
        *norm("emb_norm", "embeddings.LayerNorm"),
        # BertModel only (BertForMaskedLM builds its encoder without a pooler)
        *linear("pooler", "pooler.dense"),
        *linear("head_dense", PRED + "transform.dense", head=True),
        *norm("head_norm", PRED + "transform.LayerNorm", head=True),
        Entry("lm_head", PRED + "decoder.weight", "linear", head=True),
    )

    def check_config(self, config: BertConfig) -> None:
        super().check_config(config)
        if getattr(config, "add_cross_attention", False):
            raise GrowError("BERT with cross-attention (add_cross_attention=True) is not supported")

    def edge_flops_per_token(self, config: BertConfig, dims: Dims, seq_len: int, head: bool) -> float:
        """The decoder, and the MLM head's transform before it."""
        return super().edge_flops_per_token(config, dims, seq_len, head) + (2 * dims.hidden**2 if head else 0)

    # --- the MLM decoder bias (see the module docstring) ---------------------
    @staticmethod
    def _tied(prefix: str, config: BertConfig) -> bool:
        return bool(prefix) and bool(getattr(config, "tie_word_embeddings", False))

    def extra_to_canonical(self, sd, prefix, config):
        if PRED + "bias" not in sd:
            return {}
        if self._tied(prefix, config):
            return {"lm_head_bias": sd[PRED + "bias"].clone()}
        return {"lm_head_bias": sd[PRED + "decoder.bias"].clone(), "mlm_bias": sd[PRED + "bias"].clone()}

    def extra_from_canonical(self, tensors, prefix, config):
        if "lm_head_bias" not in tensors:
            return {}
        if self._tied(prefix, config):
            # one parameter under two names: HF fills decoder.bias from it
            return {PRED + "bias": tensors["lm_head_bias"]}
        return {PRED + "decoder.bias": tensors["lm_head_bias"], PRED + "bias": tensors["mlm_bias"]}
