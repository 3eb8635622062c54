"""ViT: ``ViTForImageClassification`` and ``ViTModel`` (pre-LN encoder).

transformers 5 names the encoder blocks ``layers.{i}`` with ``attention.{q,k,v,o}_proj``
and ``mlp.fc1``/``mlp.fc2``. The class token, the position table and the patch
convolution are stored by HF with extra axes; the hooks below reshape them into
math orientation (a patch embedding is a linear map from the C*p*p pixels of a
patch to D) and back, with views and transposes only.
"""
from __future__ import annotations

from collections.abc import Iterable

from transformers import ViTConfig, ViTForImageClassification, ViTModel

from ..core.canonical import Dims
from ..core.errors import GrowError
from .base import IMAGE, Adapter, Entry, linear, norm

LAYER = "layers.{i}."
EMB = "embeddings."
PATCH = EMB + "patch_embeddings.projection."


def _pair(x) -> tuple[int, int]:
    return tuple(x) if isinstance(x, Iterable) else (x, x)


class ViTAdapter(Adapter):
    family = "vit"
    model_type = "vit"
    head_class, base_class = ViTForImageClassification, ViTModel
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=8,
                patch_size=4, num_channels=1, num_labels=10, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
    objective = IMAGE
    gated_mlp = False
    learned_positions = True
    head_dim_from_hidden = True
    supports_gqa = False
    positions_field = None
    count_fields = ("image_size", "patch_size", "num_channels", "num_labels")
    layer_entries = (
        *norm("layer.norm1", LAYER + "layernorm_before"),
        *linear("layer.q", LAYER + "attention.q_proj"),
        *linear("layer.k", LAYER + "attention.k_proj"),
        *linear("layer.v", LAYER + "attention.v_proj"),
        *linear("layer.o", LAYER + "attention.o_proj"),
        *norm("layer.norm2", LAYER + "layernorm_after"),
        *linear("layer.mlp_in", LAYER + "mlp.fc1"),
        *linear("layer.mlp_out", LAYER + "mlp.fc2"),
    )
    global_entries = (
        Entry("patch_bias", PATCH + "bias"),
        *norm("final_norm", "layernorm"),
        # ViTModel only (the classifier builds its encoder without a pooler)
        *linear("pooler", "pooler.dense"),
        *linear("classifier", "classifier", head=True),
    )

    def task_fields(self, *, seq_len: int, vocab_size: int, image_size: int, patch_size: int,
                    num_labels: int) -> dict:
        return {"image_size": image_size, "patch_size": patch_size, "num_channels": 1, "num_labels": num_labels}

    def positions(self, config: ViTConfig, seq_len: int | None) -> int:
        """The patches and the CLS token, whatever the text length."""
        return (config.image_size // config.patch_size) ** 2 + 1

    def edge_flops_per_token(self, config: ViTConfig, dims: Dims, seq_len: int, head: bool) -> float:
        """The patch projection (patches only) and the classifier (the CLS token only), spread over the positions."""
        patches = seq_len - 1
        total = 2 * config.num_channels * config.patch_size**2 * dims.hidden * patches / seq_len
        return total + (2 * dims.hidden * config.num_labels / seq_len if head else 0)

    def edge_parameters(self, config: ViTConfig, dims: Dims) -> int:
        """The patch projection, the position table and CLS token, and the classifier."""
        patches = (config.image_size // config.patch_size) ** 2
        return (config.num_channels * config.patch_size**2 * dims.hidden + (patches + 2) * dims.hidden
                + dims.hidden * config.num_labels)

    def logit_width(self, config: ViTConfig) -> int:
        return 0  # the classifier reads the CLS token only

    def write_dims(self, config: ViTConfig, dims: Dims) -> None:
        if getattr(config, "pooler_output_size", None) == config.hidden_size:
            config.pooler_output_size = dims.hidden  # it defaults to hidden_size and has to follow it
        if getattr(config, "head_dim", None) is not None:
            config.head_dim = dims.head_dim
        super().write_dims(config, dims)

    def check_config(self, config: ViTConfig) -> None:
        super().check_config(config)
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None)
        if head_dim is not None and head_dim != hidden // heads:
            raise GrowError(f"ViT with head_dim={head_dim} != hidden_size/num_attention_heads is not supported")
        pooler = getattr(config, "pooler_output_size", None)
        if pooler not in (None, hidden):
            raise GrowError(f"ViT with pooler_output_size={pooler} != hidden_size={hidden} is not supported")

    # --- class token, position table and patch convolution ------------------
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
