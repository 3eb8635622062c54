"""ViT: ``ViTForImageClassification`` and ``ViTModel`` (pre-LN encoder).

transformers 5 names the encoder blocks ``layers.{i}`` with ``attention.{q,k,v,o}_proj``
and ``mlp.fc1``/``mlp.fc2``. The class token, the position table and the patch
convolution are stored by HF with extra axes; the hooks below reshape them into
math orientation (a patch embedding is a linear map from the C*p*p pixels of a
patch to D) and back, with views and transposes only.
"""
from __future__ import annotations

from collections.abc import Iterable

from transformers import ViTConfig

from ..core.canonical import Dims
from ..core.errors import GrowError
from .base import Adapter, Entry

LAYER = "layers.{i}."
EMB = "embeddings."
PATCH = EMB + "patch_embeddings.projection."


def _pair(x) -> tuple[int, int]:
    return tuple(x) if isinstance(x, Iterable) else (x, x)


class ViTAdapter(Adapter):
    family = "vit"
    model_type = "vit"
    layer_entries = (
        Entry("layer.norm1", LAYER + "layernorm_before.weight", ("D.out",)),
        Entry("layer.norm1_bias", LAYER + "layernorm_before.bias", ("D.out",)),
        Entry("layer.q", LAYER + "attention.q_proj.weight", ("D.in", "Q.out"), layout="linear"),
        Entry("layer.q_bias", LAYER + "attention.q_proj.bias", ("Q.out",)),
        Entry("layer.k", LAYER + "attention.k_proj.weight", ("D.in", "K.out"), layout="linear"),
        Entry("layer.k_bias", LAYER + "attention.k_proj.bias", ("K.out",)),
        Entry("layer.v", LAYER + "attention.v_proj.weight", ("D.in", "K.out"), layout="linear"),
        Entry("layer.v_bias", LAYER + "attention.v_proj.bias", ("K.out",)),
        Entry("layer.o", LAYER + "attention.o_proj.weight", ("Q.in", "D.out"), layout="linear"),
        Entry("layer.o_bias", LAYER + "attention.o_proj.bias", ("D.out",)),
        Entry("layer.norm2", LAYER + "layernorm_after.weight", ("D.out",)),
        Entry("layer.norm2_bias", LAYER + "layernorm_after.bias", ("D.out",)),
        Entry("layer.mlp_in", LAYER + "mlp.fc1.weight", ("D.in", "F.out"), layout="linear"),
        Entry("layer.mlp_in_bias", LAYER + "mlp.fc1.bias", ("F.out",)),
        Entry("layer.mlp_out", LAYER + "mlp.fc2.weight", ("F.in", "D.out"), layout="linear"),
        Entry("layer.mlp_out_bias", LAYER + "mlp.fc2.bias", ("D.out",)),
    )
    global_entries = (
        Entry("patch_bias", PATCH + "bias", ("D.out",)),
        Entry("final_norm", "layernorm.weight", ("D.out",)),
        Entry("final_norm_bias", "layernorm.bias", ("D.out",)),
        # ViTModel only (the classifier builds its encoder without a pooler)
        Entry("pooler", "pooler.dense.weight", ("D.in", "D.out"), layout="linear"),
        Entry("pooler_bias", "pooler.dense.bias", ("D.out",)),
        Entry("classifier", "classifier.weight", ("D.in", "N"), layout="linear", head=True),
        Entry("classifier_bias", "classifier.bias", ("N",), head=True),
    )

    def dims(self, config: ViTConfig) -> Dims:
        hidden, heads = config.hidden_size, config.num_attention_heads
        return Dims(
            hidden=hidden,
            ffn=config.intermediate_size,
            heads=heads,
            kv_heads=heads,
            head_dim=hidden // heads,
            layers=config.num_hidden_layers,
        )

    def write_dims(self, config: ViTConfig, dims: Dims) -> None:
        if getattr(config, "pooler_output_size", None) == config.hidden_size:
            config.pooler_output_size = dims.hidden  # it defaults to hidden_size and has to follow it
        if getattr(config, "head_dim", None) is not None:
            config.head_dim = dims.head_dim
        config.hidden_size, config.intermediate_size = dims.hidden, dims.ffn
        config.num_attention_heads, config.num_hidden_layers = dims.heads, dims.layers

    def check_config(self, config: ViTConfig) -> None:
        hidden, heads = config.hidden_size, config.num_attention_heads
        if hidden % heads:
            raise GrowError(f"num_attention_heads={heads} does not divide hidden_size={hidden}")
        head_dim = getattr(config, "head_dim", None)
        if head_dim is not None and head_dim != hidden // heads:
            raise GrowError(f"ViT with head_dim={head_dim} != hidden_size/num_attention_heads is not supported")
        pooler = getattr(config, "pooler_output_size", None)
        if pooler not in (None, hidden):
            raise GrowError(f"ViT with pooler_output_size={pooler} != hidden_size={hidden} is not supported")

    # --- class token, position table and patch convolution ------------------
    def extra_specs(self) -> dict[str, tuple[str, ...]]:
        return {"cls": ("D.out",), "pos_emb": ("P", "D.out"), "patch": ("C", "D.out")}

    def extra_to_canonical(self, sd, prefix, config):
        if prefix + EMB + "mask_token" in sd:
            raise GrowError("ViTModel built with use_mask_token=True is not supported (its mask token has no role)")
        weight = sd[prefix + PATCH + "weight"]  # (D, C, p, p)
        return {
            "cls": sd[prefix + EMB + "cls_token"].reshape(-1).clone(),  # (1, 1, D) -> (D,)
            "pos_emb": sd[prefix + EMB + "position_embeddings"][0].clone(),  # (1, N+1, D) -> (N+1, D)
            "patch": weight.reshape(weight.shape[0], -1).t().clone(),  # -> (C*p*p, D)
        }

    def extra_from_canonical(self, tensors, prefix, config):
        out = {}
        if "cls" in tensors:
            out[prefix + EMB + "cls_token"] = tensors["cls"].reshape(1, 1, -1)
        if "pos_emb" in tensors:
            out[prefix + EMB + "position_embeddings"] = tensors["pos_emb"].unsqueeze(0)
        if "patch" in tensors:
            patch = tensors["patch"]
            p0, p1 = _pair(config.patch_size)
            out[prefix + PATCH + "weight"] = patch.t().reshape(patch.shape[1], config.num_channels, p0, p1)
        return out
