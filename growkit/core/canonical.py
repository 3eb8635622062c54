"""The canonical view: one family-independent description of a transformer's weights.

Every operator is written once against this view instead of once per Hugging Face
class. Tensors are named by *role* (``layer.q``, ``tok_emb``...), matrices are in
math orientation (in x out), and per-layer tensors are stacked on a leading layer
axis. Each tensor carries an axis spec so that operators can grow any axis
without knowing which tensor they hold.

Axis names
    ``L``  layers (leading axis of every ``layer.*`` tensor)
    ``D``  hidden (residual stream)      ``F``  feed-forward inner width
    ``Q``  query heads x head_dim        ``K``  key/value heads x head_dim
    ``H``  one head's units (head_dim: a per-head norm's gain; never grown)
    anything else (``V`` vocab, ``P`` positions, ``T`` token types,
    ``C`` patch pixels, ``N`` labels) is never grown.

Each growable axis is marked ``.in`` or ``.out``: the side of the linear map it
sits on. Copying a unit duplicates its ``.out`` entries and splits its ``.in``
entries by the number of copies, which is what keeps a widened map's output
unchanged (Net2Net's argument). A norm that feeds a tied decoder directly is
marked ``.in`` because its scale is what has to be split there.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

GROWABLE = ("D", "F", "Q", "K")

_PER_LAYER: dict[str, tuple[str, ...]] = {
    "q": ("D.in", "Q.out"), "q_bias": ("Q.out",),
    "k": ("D.in", "K.out"), "k_bias": ("K.out",),
    "v": ("D.in", "K.out"), "v_bias": ("K.out",),
    "o": ("Q.in", "D.out"), "o_bias": ("D.out",),
    "mlp_in": ("D.in", "F.out"), "mlp_in_bias": ("F.out",),
    "mlp_gate": ("D.in", "F.out"), "mlp_gate_bias": ("F.out",),
    "mlp_out": ("F.in", "D.out"), "mlp_out_bias": ("D.out",),
    "norm1": ("D.out",), "norm1_bias": ("D.out",),
    "norm2": ("D.out",), "norm2_bias": ("D.out",),
    "q_norm": ("H",), "k_norm": ("H",),
    "post_attn_norm": ("D.out",), "post_mlp_norm": ("D.out",),
}  # fmt: skip

#: every role's axis spec: the same in every family, so adapters only say where a role lives
ROLE_SPECS: dict[str, tuple[str, ...]] = {
    **{f"layer.{role}": ("L",) + spec for role, spec in _PER_LAYER.items()},
    "tok_emb": ("V", "D.out"), "pos_emb": ("P", "D.out"), "type_emb": ("T", "D.out"),
    "cls": ("D.out",), "patch": ("C", "D.out"), "patch_bias": ("D.out",),
    "emb_norm": ("D.out",), "emb_norm_bias": ("D.out",),
    "final_norm": ("D.out",), "final_norm_bias": ("D.out",),
    "pooler": ("D.in", "D.out"), "pooler_bias": ("D.out",),
    "head_dense": ("D.in", "D.out"), "head_dense_bias": ("D.out",),
    "head_norm": ("D.out",), "head_norm_bias": ("D.out",),
    "lm_head": ("D.in", "V"), "lm_head_bias": ("V",), "mlm_bias": ("V",),
    "classifier": ("D.in", "N"), "classifier_bias": ("N",),
}  # fmt: skip


@dataclass(frozen=True)
class Dims:
    """The sizes that growth changes; ``Q = heads * head_dim``, ``K = kv_heads * head_dim``."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int

    def axis(self, name: str) -> int:
        return {
            "D": self.hidden,
            "F": self.ffn,
            "Q": self.heads * self.head_dim,
            "K": self.kv_heads * self.head_dim,
            "L": self.layers,
        }[name]

    def check_growth_to(self, target: "Dims") -> None:
        """Refuse a target that is smaller in any dimension or changes head_dim."""
        from .errors import GrowError

        for name in ("hidden", "ffn", "heads", "kv_heads", "layers"):
            small, big = getattr(self, name), getattr(target, name)
            if big < small:
                raise GrowError(f"target {name}={big} is smaller than the source's {small}; growkit only grows models")
        if target.head_dim != self.head_dim:
            raise GrowError(
                f"target head_dim={target.head_dim} differs from the source's {self.head_dim}; "
                "grow the number of heads instead (RoPE and the attention scale depend on head_dim)"
            )


def parse_axis(token: str) -> tuple[str, str | None]:
    """``"D.in"`` -> ``("D", "in")``; ``"V"`` -> ``("V", None)``."""
    name, _, side = token.partition(".")
    return name, (side or None)


@dataclass
class Canonical:
    """A model's weights by role, with their axis specs and the sizes they imply.

    ``tensors`` and ``specs`` share keys. ``tied`` means the output projection is
    the token embedding (there is then no ``lm_head`` tensor). ``extra`` holds
    facts about the source beyond its tensors (see
    :meth:`~growkit.arch.Adapter.canonical_facts`) and what operators record for
    the grown config (see :meth:`~growkit.arch.Adapter.grown_config`).
    """

    family: str
    dims: Dims
    tensors: dict[str, torch.Tensor]
    specs: dict[str, tuple[str, ...]]
    tied: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.tensors) != set(self.specs):
            raise ValueError(f"tensors and specs disagree: {sorted(set(self.tensors) ^ set(self.specs))}")

    def layer_names(self) -> list[str]:
        return [n for n in self.tensors if n.startswith("layer.")]

    def global_names(self) -> list[str]:
        return [n for n in self.tensors if not n.startswith("layer.")]

    def with_tensors(self, tensors: dict[str, torch.Tensor], dims: Dims | None = None) -> "Canonical":
        """A copy holding other tensors (same roles and specs), optionally at other sizes."""
        return replace(self, tensors=dict(tensors), dims=dims or self.dims, specs=dict(self.specs))

    def expected_shape(self, name: str, dims: Dims | None = None) -> tuple[int, ...]:
        """The shape ``name`` must have at ``dims``; fixed axes keep their current size."""
        dims = dims or self.dims
        shape = []
        for size, token in zip(self.tensors[name].shape, self.specs[name]):
            axis, _ = parse_axis(token)
            shape.append(dims.axis(axis) if axis in GROWABLE or axis == "L" else size)
        return tuple(shape)

    def validate(self) -> None:
        """Every tensor's shape matches its spec at ``dims``: catches adapter and operator bugs early."""
        for name, tensor in self.tensors.items():
            if tuple(tensor.shape) != self.expected_shape(name):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} != expected {self.expected_shape(name)}")
