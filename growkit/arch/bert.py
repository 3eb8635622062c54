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

from transformers import BertConfig

from ..core.canonical import Dims
from ..core.errors import GrowError
from .base import Adapter, Entry

LAYER = "encoder.layer.{i}."
PRED = "cls.predictions."


class BertAdapter(Adapter):
    family = "bert"
    model_type = "bert"
    layer_entries = (
        Entry("layer.q", LAYER + "attention.self.query.weight", ("D.in", "Q.out"), layout="linear"),
        Entry("layer.q_bias", LAYER + "attention.self.query.bias", ("Q.out",)),
        Entry("layer.k", LAYER + "attention.self.key.weight", ("D.in", "K.out"), layout="linear"),
        Entry("layer.k_bias", LAYER + "attention.self.key.bias", ("K.out",)),
        Entry("layer.v", LAYER + "attention.self.value.weight", ("D.in", "K.out"), layout="linear"),
        Entry("layer.v_bias", LAYER + "attention.self.value.bias", ("K.out",)),
        Entry("layer.o", LAYER + "attention.output.dense.weight", ("Q.in", "D.out"), layout="linear"),
        Entry("layer.o_bias", LAYER + "attention.output.dense.bias", ("D.out",)),
        Entry("layer.norm1", LAYER + "attention.output.LayerNorm.weight", ("D.out",)),
        Entry("layer.norm1_bias", LAYER + "attention.output.LayerNorm.bias", ("D.out",)),
        Entry("layer.mlp_in", LAYER + "intermediate.dense.weight", ("D.in", "F.out"), layout="linear"),
        Entry("layer.mlp_in_bias", LAYER + "intermediate.dense.bias", ("F.out",)),
        Entry("layer.mlp_out", LAYER + "output.dense.weight", ("F.in", "D.out"), layout="linear"),
        Entry("layer.mlp_out_bias", LAYER + "output.dense.bias", ("D.out",)),
        Entry("layer.norm2", LAYER + "output.LayerNorm.weight", ("D.out",)),
        Entry("layer.norm2_bias", LAYER + "output.LayerNorm.bias", ("D.out",)),
    )
    global_entries = (
        Entry("tok_emb", "embeddings.word_embeddings.weight", ("V", "D.out")),
        Entry("pos_emb", "embeddings.position_embeddings.weight", ("P", "D.out")),
        Entry("type_emb", "embeddings.token_type_embeddings.weight", ("T", "D.out")),
        Entry("emb_norm", "embeddings.LayerNorm.weight", ("D.out",)),
        Entry("emb_norm_bias", "embeddings.LayerNorm.bias", ("D.out",)),
        # BertModel only (BertForMaskedLM builds its encoder without a pooler)
        Entry("pooler", "pooler.dense.weight", ("D.in", "D.out"), layout="linear"),
        Entry("pooler_bias", "pooler.dense.bias", ("D.out",)),
        Entry("head_dense", PRED + "transform.dense.weight", ("D.in", "D.out"), layout="linear", head=True),
        Entry("head_dense_bias", PRED + "transform.dense.bias", ("D.out",), head=True),
        Entry("head_norm", PRED + "transform.LayerNorm.weight", ("D.out",), head=True),
        Entry("head_norm_bias", PRED + "transform.LayerNorm.bias", ("D.out",), head=True),
        Entry("lm_head", PRED + "decoder.weight", ("D.in", "V"), layout="linear", head=True),
    )

    def dims(self, config: BertConfig) -> Dims:
        hidden, heads = config.hidden_size, config.num_attention_heads
        return Dims(
            hidden=hidden,
            ffn=config.intermediate_size,
            heads=heads,
            kv_heads=heads,
            head_dim=hidden // heads,
            layers=config.num_hidden_layers,
        )

    def write_dims(self, config: BertConfig, dims: Dims) -> None:
        config.hidden_size, config.intermediate_size = dims.hidden, dims.ffn
        config.num_attention_heads, config.num_hidden_layers = dims.heads, dims.layers

    def check_config(self, config: BertConfig) -> None:
        if config.hidden_size % config.num_attention_heads:
            raise GrowError(
                f"num_attention_heads={config.num_attention_heads} does not divide hidden_size={config.hidden_size}"
            )
        if getattr(config, "add_cross_attention", False):
            raise GrowError("BERT with cross-attention (add_cross_attention=True) is not supported")

    # --- the MLM decoder bias (see the module docstring) ---------------------
    @staticmethod
    def _tied(prefix: str, config: BertConfig) -> bool:
        return bool(prefix) and bool(getattr(config, "tie_word_embeddings", False))

    def extra_specs(self) -> dict[str, tuple[str, ...]]:
        return {"lm_head_bias": ("V",), "mlm_bias": ("V",)}

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

    def tied_specs(self, specs):
        return {"head_norm": ("D.in",), "head_norm_bias": ("D.in",)}
