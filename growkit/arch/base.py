"""The adapter contract: Hugging Face model <-> canonical view, bit-exactly.

An adapter is mostly a table. Each :class:`Entry` says which HF tensor holds a
role and how to turn it into math orientation; the role's axes are the same in
every family (``ROLE_SPECS``). The generic code here walks that table both ways,
so a family's module only writes what is really special about it (fused
projections, conv patches, config names).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..core.canonical import ROLE_SPECS, Canonical, Dims
from ..core.errors import GrowError

Tensor = torch.Tensor
#: special token ids that lie inside the tiny vocabularies
TINY_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")


@dataclass(frozen=True)
class Entry:
    """One role: ``canon`` name, HF key (``{i}`` is the layer index) and layout.

    ``layout`` is ``"linear"`` for ``nn.Linear`` weights (out x in, transposed into
    math orientation) and ``"raw"`` for tensors already in canonical layout.
    ``head`` marks keys outside the base model (LM heads, classifiers).
    """

    canon: str
    key: str
    layout: str = "raw"
    head: bool = False


def linear(role: str, key: str, *, bias: bool = True, head: bool = False, layout: str = "linear") -> tuple[Entry, ...]:
    """An ``nn.Linear`` at ``key`` (``layout="raw"`` for GPT-2's in x out Conv1D): weight and bias (``role_bias``)."""
    weight = Entry(role, key + ".weight", layout, head)
    return (weight, Entry(role + "_bias", key + ".bias", head=head)) if bias else (weight,)


def norm(role: str, key: str, *, bias: bool = True, head: bool = False) -> tuple[Entry, ...]:
    """A LayerNorm (weight and bias) or, with ``bias=False``, an RMSNorm at ``key``."""
    weight = Entry(role, key + ".weight", head=head)
    return (weight, Entry(role + "_bias", key + ".bias", head=head)) if bias else (weight,)


def _to_math(t: Tensor, layout: str) -> Tensor:
    return t.t() if layout == "linear" else t


#: what a family's loss predicts (``Adapter.objective``)
CAUSAL, MASKED, IMAGE = "causal", "masked", "image"


class Adapter:
    """One family's facts and its table; everything outside ``arch/`` asks the adapter.

    The defaults describe a Llama-like decoder (pre-RMSNorm, SwiGLU, rotary
    positions, GQA, an explicit ``head_dim``), so a family of that kind (Mistral,
    Qwen2) is a subclass of :class:`~growkit.arch.llama.LlamaAdapter` that sets
    the names and classes, plus one line in ``arch/__init__.py``.

    Must set:
        ``family`` (growkit's name, also the canonical view's), ``model_type``
        (HF's ``config.model_type``), ``head_class`` and ``base_class`` (the HF
        model with its LM/classification head, and the bare one), ``tiny``
        (config fields of a tiny model, for tests and demos), ``layer_entries``
        and ``global_entries`` (where each role lives).
    May set (default):
        ``objective`` (CAUSAL: next-token loss; MASKED: BERT's MLM; IMAGE: image
        classification), ``gated_mlp`` (True: gate and up projections),
        ``learned_positions`` (False: a rotary model has no position table),
        ``post_norm`` (False: norms sit before the residual branch),
        ``head_dim_from_hidden`` (False), ``supports_gqa`` (True),
        ``tied_norm`` ("final_norm"), ``ffn_field`` ("intermediate_size"),
        ``positions_field`` ("max_position_embeddings"; None: no text length),
        ``count_fields`` (config fields checked to be positive integers).
    May override: ``dims``/``write_dims``/``check_config`` (config names),
    ``extra_to_canonical``/``extra_from_canonical`` (special tensors: fused
    projections), ``to_canonical``/``hf_state_dict`` (tensors stored in another
    form than the one the operators need: Gemma's 1 + w gains and scaled
    embedding), ``canonical_facts`` (what the view records in ``extra``),
    ``grown_layer_types`` (per-layer attention types of a deeper target),
    ``positions`` (positions one example occupies), ``edge_flops_per_token``
    and ``edge_parameters`` (embeddings and head, for FLOP and size counts),
    ``logit_width`` and ``task_fields`` (a benchmark model's data-shaped fields).
    """

    family: ClassVar[str]
    model_type: ClassVar[str]
    head_class: ClassVar[type[PreTrainedModel]]
    base_class: ClassVar[type[PreTrainedModel]]
    tiny: ClassVar[dict]
    layer_entries: ClassVar[tuple[Entry, ...]]
    global_entries: ClassVar[tuple[Entry, ...]]
    objective: ClassVar[str] = CAUSAL
    gated_mlp: ClassVar[bool] = True
    learned_positions: ClassVar[bool] = False
    post_norm: ClassVar[bool] = False
    #: whether hidden = heads * head_dim is forced by the architecture (not Llama)
    head_dim_from_hidden: ClassVar[bool] = False
    supports_gqa: ClassVar[bool] = True
    #: the norm right before a tied decoder: it is split like an input (see canonical.py)
    tied_norm: ClassVar[str] = "final_norm"
    #: the config field holding the FFN width
    ffn_field: ClassVar[str] = "intermediate_size"
    #: the config field holding the longest text the model reads (None: the model reads no text)
    positions_field: ClassVar[str | None] = "max_position_embeddings"
    #: config fields besides the sizes that must be positive integers when set
    count_fields: ClassVar[tuple[str, ...]] = ("vocab_size", "max_position_embeddings")

    # --- the family's models and configs ------------------------------------
    @property
    def class_names(self) -> tuple[str, str]:
        """The supported HF class names: with a head first, then the bare model."""
        return self.head_class.__name__, self.base_class.__name__

    def model_class(self, name: str | None = None) -> type[PreTrainedModel]:
        """The supported class called ``name`` (None: the one with a head), or a clear error."""
        for cls in (self.head_class, self.base_class):
            if name in (None, cls.__name__):
                return cls
        raise GrowError(f"unsupported class {name}; for {self.model_type} growkit supports {', '.join(self.class_names)}")

    def tiny_config(self, **overrides) -> PretrainedConfig:
        """A tiny config of this family (dropout off, special ids inside the vocabulary); ``overrides`` are fields."""
        return self.head_class.config_class(**{**self.tiny, **overrides})

    def task_fields(self, *, seq_len: int, vocab_size: int, image_size: int, patch_size: int,
                    num_labels: int) -> dict:
        """The config fields that follow the data (a benchmark's text length and vocabulary)."""
        return {self.positions_field: seq_len, "vocab_size": vocab_size}

    def max_positions(self, config: PretrainedConfig) -> int | None:
        """The longest text the model reads (None: no limit, or no text)."""
        return getattr(config, self.positions_field, None) if self.positions_field else None

    # --- per-token counts (FLOPs, sizes) ------------------------------------
    def positions(self, config: PretrainedConfig, seq_len: int | None) -> int | None:
        """Token positions one example occupies: the text length here (ViT: patches + CLS)."""
        return seq_len

    def edge_flops_per_token(self, config: PretrainedConfig, dims: Dims, seq_len: int, head: bool) -> float:
        """Forward matmul FLOPs per position outside the layer stack: the LM head's projection."""
        return 2 * dims.hidden * config.vocab_size if head else 0

    def edge_parameters(self, config: PretrainedConfig, dims: Dims) -> int:
        """Parameters outside the layer stack and the final norm: embeddings, positions, an untied head."""
        total = config.vocab_size * dims.hidden
        if self.learned_positions:
            total += (self.max_positions(config) or 0) * dims.hidden
        if not getattr(config, "tie_word_embeddings", False):
            total += config.vocab_size * dims.hidden
        return total

    def logit_width(self, config: PretrainedConfig) -> int:
        """Logits per position that the loss reads (the vocabulary; 0 when only one position is scored)."""
        return config.vocab_size

    # --- config hooks (HF's standard names; GPT-2 maps them through attribute_map) --
    def ffn_size(self, config: PretrainedConfig) -> int:
        return getattr(config, self.ffn_field)

    def dims(self, config: PretrainedConfig) -> Dims:
        hidden, heads = config.hidden_size, config.num_attention_heads
        explicit = None if self.head_dim_from_hidden else getattr(config, "head_dim", None)
        return Dims(
            hidden=hidden,
            ffn=self.ffn_size(config),
            heads=heads,
            kv_heads=(getattr(config, "num_key_value_heads", None) or heads) if self.supports_gqa else heads,
            head_dim=explicit or hidden // heads,
            layers=config.num_hidden_layers,
        )

    def write_dims(self, config: PretrainedConfig, dims: Dims) -> None:
        """Set ``dims`` on ``config`` in place, then check the result (configs validate only when built)."""
        config.hidden_size, config.num_attention_heads, config.num_hidden_layers = dims.hidden, dims.heads, dims.layers
        setattr(config, self.ffn_field, dims.ffn)
        if self.supports_gqa:
            config.num_key_value_heads = dims.kv_heads
        if not self.head_dim_from_hidden:
            config.head_dim = dims.head_dim  # explicit, or HF re-derives it from hidden/heads
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = self.grown_layer_types(config.layer_types, dims.layers)
        self.check_config(config)

    def grown_layer_types(self, types: list[str], layers: int) -> list[str]:
        """The attention type of each of ``layers`` layers in a target config: the source's pattern, stacked.

        Layer l gets the type of source layer l mod L1, the layer a stacked copy
        comes from (the learned operators' default start). A fixed method's grown
        model then takes each layer's type from the layer it copies instead (see
        :meth:`from_canonical`), so a copy keeps its attention span.
        """
        return [types[layer % len(types)] for layer in range(layers)]

    def rms_norm_eps(self, config: PretrainedConfig) -> float | None:
        """The norms' epsilon when every norm is an RMSNorm (HF names it ``rms_norm_eps``); None for LayerNorms."""
        return getattr(config, "rms_norm_eps", None)

    def check_config(self, config: PretrainedConfig) -> None:
        """Refuse configs this adapter cannot represent exactly."""
        hidden, heads = config.hidden_size, config.num_attention_heads
        if hidden % heads:
            # HF's own validators require it, even where head_dim is a separate field (Llama)
            raise GrowError(f"num_attention_heads={heads} does not divide hidden_size={hidden}")
        kv_heads = self.dims(config).kv_heads
        if heads % kv_heads:
            raise GrowError(f"num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}")

    # --- hooks for special tensors ------------------------------------------
    def extra_to_canonical(self, sd: dict[str, Tensor], prefix: str, config: PretrainedConfig) -> dict[str, Tensor]:
        return {}

    def extra_from_canonical(self, tensors: dict[str, Tensor], prefix: str, config: PretrainedConfig) -> dict[str, Tensor]:
        return {}

    # --- generic machinery --------------------------------------------------
    def is_tied(self, model: PreTrainedModel) -> bool:
        return bool(getattr(model.config, "tie_word_embeddings", False)) and self.has_head(model)

    @staticmethod
    def prefix(model: PreTrainedModel) -> str:
        """Key prefix of the base model inside ``model`` ('' for a bare base model)."""
        return "" if model.base_model is model else model.base_model_prefix + "."

    @staticmethod
    def has_head(model: PreTrainedModel) -> bool:
        return model.base_model is not model

    def _entries(self, model_has_head: bool, tied: bool) -> list[Entry]:
        return [
            e
            for e in self.global_entries
            if (model_has_head or not e.head) and not (tied and e.canon == "lm_head")
        ]

    def to_canonical(self, model: PreTrainedModel) -> Canonical:
        """The model's weights by role, exactly (no arithmetic, only views and stacking)."""
        config = model.config
        self.check_config(config)
        dims = self.dims(config)
        sd = model.state_dict()
        prefix = self.prefix(model)
        tied = self.is_tied(model)
        tensors: dict[str, Tensor] = {}
        specs: dict[str, tuple[str, ...]] = {}
        for e in self.layer_entries:
            key = prefix + e.key
            if key.format(i=0) not in sd:
                continue
            tensors[e.canon] = torch.stack([_to_math(sd[key.format(i=i)], e.layout) for i in range(dims.layers)])
        for e in self._entries(self.has_head(model), tied):
            key = e.key if e.head else prefix + e.key
            if key in sd:
                tensors[e.canon] = _to_math(sd[key], e.layout).clone()
        tensors.update(self.extra_to_canonical(sd, prefix, config))
        specs = {name: ROLE_SPECS[name] for name in tensors}
        if tied:
            for name in (self.tied_norm, self.tied_norm + "_bias"):
                if name in specs:
                    specs[name] = ("D.in",)
        canon = Canonical(self.family, dims, tensors, specs, tied=tied, extra=self.canonical_facts(config))
        canon.validate()
        return canon

    def canonical_facts(self, config: PretrainedConfig) -> dict:
        """What the canonical view's ``extra`` records about the source beyond its tensors.

        ``rms_norm``: every norm is an RMSNorm (zero-extension applies).
        ``layer_types``: the attention type of each layer, where they differ
        (:meth:`from_canonical` gives a copied layer its source's type).
        """
        facts: dict = {"rms_norm": True} if self.rms_norm_eps(config) is not None else {}
        types = getattr(config, "layer_types", None)
        if types is not None and len(set(types)) > 1:
            facts["layer_types"] = tuple(types)
        return facts

    def hf_state_dict(self, tensors: dict[str, Tensor], model: PreTrainedModel, tied: bool,
                      extra: dict | None = None) -> dict[str, Tensor]:
        """HF-keyed tensors for ``model`` from canonical ``tensors``, without copying.

        Differentiable: ``fit`` feeds its result to ``torch.func.functional_call``.
        Tied decoders get no entry of their own; HF ties them to the embedding.
        ``extra`` is the canonical view's facts (see :meth:`canonical_facts`), for
        an adapter whose tensors depend on the source's sizes (Gemma's embedding scale).
        """
        config = model.config
        prefix = self.prefix(model)
        layers = self.dims(config).layers
        sd: dict[str, Tensor] = {}
        for e in self.layer_entries:
            if e.canon in tensors:
                for i in range(layers):
                    sd[prefix + e.key.format(i=i)] = _to_math(tensors[e.canon][i], e.layout)
        for e in self._entries(self.has_head(model), tied):
            if e.canon in tensors:
                sd[e.key if e.head else prefix + e.key] = _to_math(tensors[e.canon], e.layout)
        sd.update(self.extra_from_canonical(tensors, prefix, config))
        return sd

    def from_canonical(self, canon: Canonical, config: PretrainedConfig, model_class: type[PreTrainedModel]) -> PreTrainedModel:
        """Build ``model_class`` at ``config``'s sizes holding exactly ``canon``'s weights, in eval mode.

        The config is adjusted to what the operators recorded (see :meth:`grown_config`).
        """
        canon.validate()
        if self.dims(config) != canon.dims:
            raise ValueError(f"config sizes {self.dims(config)} do not match the weights' {canon.dims}")
        return self.load_canonical(model_class(self.grown_config(config, canon.extra)), canon)

    def grown_config(self, config: PretrainedConfig, extra: dict) -> PretrainedConfig:
        """``config`` as grown weights with the facts ``extra`` need it (a copy where it changes).

        An operator that rescaled the RMSNorm gains (zero-extension) leaves
        ``extra["rms_norm_eps_scale"]``: ``rms_norm_eps`` is scaled to match, so the
        config travels with the weights. Likewise a depth operator leaves
        ``extra["layer_source"]``: where the source's layers mix attention types,
        each layer gets its source layer's type.
        """
        eps_scale = extra.get("rms_norm_eps_scale", 1.0)
        types, source = extra.get("layer_types"), extra.get("layer_source")
        if eps_scale == 1.0 and (types is None or source is None):
            return config
        config = copy.deepcopy(config)
        if eps_scale != 1.0:
            config.rms_norm_eps = self.rms_norm_eps(config) * eps_scale
        if types is not None and source is not None:
            config.layer_types = [types[s] for s in source]
        return config

    def load_canonical(self, model: PreTrainedModel, canon: Canonical) -> PreTrainedModel:
        """Copy exactly ``canon``'s weights into ``model`` (built at its sizes) and put it in eval mode."""
        canon.validate()
        if self.dims(model.config) != canon.dims:
            raise ValueError(f"the model's sizes {self.dims(model.config)} do not match the weights' {canon.dims}")
        sd = self.hf_state_dict(canon.tensors, model, canon.tied, canon.extra)
        own = model.state_dict()
        unknown = sorted(set(sd) - set(own))
        if unknown:
            raise ValueError(f"{self.family}: weights for unknown keys {unknown[:5]}")
        with torch.no_grad():
            for key, value in sd.items():
                if own[key].shape != value.shape:
                    raise ValueError(f"{key}: shape {tuple(value.shape)} != model's {tuple(own[key].shape)}")
                own[key].copy_(value)
        missing = [n for n, _ in model.named_parameters() if n not in sd]
        if missing:
            raise ValueError(f"{self.family}: no canonical weights for {missing[:5]}")
        model.eval()
        return model

    # --- target sizes -------------------------------------------------------
    def target_config(self, config: PretrainedConfig, sizes: dict[str, int],
                      flags: dict[str, str] | None = None) -> PretrainedConfig:
        """A copy of ``config`` at the requested sizes, with the defaults the field expects.

        Unset sizes keep head_dim, the FFN ratio and the query/kv group size.
        ``flags`` names each size as the user typed it (the command line's
        ``--hidden``), so a refusal speaks the user's words; the default is the
        config field (``hidden_size=``).
        """
        def said(key: str, value: int) -> str:
            return f"{flags[key]} {value}" if flags and key in flags else f"{key}={value}"

        unknown = sorted(set(sizes) - set(SIZE_KEYS))
        if unknown:
            raise GrowError(f"unknown size {unknown[0]!r}; use one of {', '.join(SIZE_KEYS)}")
        for key, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GrowError(f"{key} must be a positive integer, got {value!r}")
        src = self.dims(config)
        hidden = sizes.get("hidden_size", src.hidden)
        if "num_attention_heads" in sizes:
            heads = sizes["num_attention_heads"]
        else:
            if hidden % src.head_dim:
                below, above = hidden - hidden % src.head_dim, hidden - hidden % src.head_dim + src.head_dim
                choices = f"{below} or {above}" if below >= src.hidden else f"{above}"
                raise GrowError(
                    f"{said('hidden_size', hidden)} is not a multiple of the source's head_dim {src.head_dim}: growth "
                    f"adds whole attention heads and keeps head_dim; choose a multiple of {src.head_dim}, such as {choices}"
                )
            heads = hidden // src.head_dim
        if self.head_dim_from_hidden and hidden % heads:
            raise GrowError(f"{said('num_attention_heads', heads)} does not divide {said('hidden_size', hidden)} "
                            "(the number of attention heads must divide the hidden size)")
        head_dim = hidden // heads if self.head_dim_from_hidden else src.head_dim
        group = src.heads // src.kv_heads
        kv_heads = sizes.get("num_key_value_heads", heads // group if heads % group == 0 else src.kv_heads)
        if heads % kv_heads:
            raise GrowError(f"{said('num_key_value_heads', kv_heads)} does not divide {said('num_attention_heads', heads)} "
                            "(head counts: the key/value heads must divide the attention heads)")
        if kv_heads != heads and not self.supports_gqa:
            raise GrowError(f"{self.family} has no grouped-query attention; "
                            f"{said('num_key_value_heads', kv_heads)} must equal the {heads} attention heads")
        ffn = sizes.get("intermediate_size", src.ffn * hidden // src.hidden)
        target = Dims(hidden, ffn, heads, kv_heads, head_dim, sizes.get("num_hidden_layers", src.layers))
        src.check_growth_to(target)
        new = copy.deepcopy(config)
        self.write_dims(new, target)
        return new
