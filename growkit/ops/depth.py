"""Depth growth: stacking (StackBERT), in-place repetition (interpolation) and identity insertion.

Each strategy is a :class:`DepthMap`: the source layer each target layer copies,
and whether the copy is silenced. A silenced copy has its residual-branch outputs
(attention output and MLP output, with biases) set to zero, so in a pre-norm
block it computes the identity. Post-norm blocks (BERT) still apply their
LayerNorms, so there it is exact only when those norms are the identity.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..arch import family_adapter
from ..core.canonical import Canonical, Dims

#: the residual branch outputs; zeroing them turns a pre-norm block into the identity
RESIDUAL_OUTPUTS = ("layer.o", "layer.o_bias", "layer.mlp_out", "layer.mlp_out_bias")


@dataclass(frozen=True)
class DepthMap:
    source: tuple[int, ...]
    silenced: tuple[bool, ...]

    @classmethod
    def stack(cls, n_old: int, n_new: int) -> "DepthMap":
        """Layer l copies layer l mod L1: the whole stack is repeated."""
        return cls(tuple(l % n_old for l in range(n_new)), (False,) * n_new)

    @classmethod
    def interpolate(cls, n_old: int, n_new: int) -> "DepthMap":
        """Layer l copies layer floor(l * L1 / L2): each layer is repeated in place."""
        return cls(tuple(l * n_old // n_new for l in range(n_new)), (False,) * n_new)

    @classmethod
    def identity(cls, n_old: int, n_new: int) -> "DepthMap":
        """Interpolation where every repeat after the first is silenced."""
        source = tuple(l * n_old // n_new for l in range(n_new))
        return cls(source, tuple(l > 0 and source[l] == source[l - 1] for l in range(n_new)))


@dataclass(frozen=True)
class DepthOperator:
    """A registered depth operator: the :class:`DepthMap` it draws from the source and target layer counts."""

    name: str
    layer_map: Callable[[int, int], DepthMap]

    def __call__(self, src: Canonical, n_layers: int) -> Canonical:
        return deepen(src, n_layers, self.layer_map(src.dims.layers, n_layers))


#: the depth operators, by the catalogue's names
DEPTH_OPERATORS: dict[str, DepthOperator] = {
    op.name: op for op in (DepthOperator("stack", DepthMap.stack), DepthOperator("interpolate", DepthMap.interpolate),
                           DepthOperator("identity", DepthMap.identity))
}


def is_post_norm(canon: Canonical) -> bool:
    """Whether ``canon``'s family normalises after the residual add (no exact identity layer then)."""
    return family_adapter(canon.family).post_norm


def deepen(src: Canonical, n_layers: int, dmap: DepthMap) -> Canonical:
    """Grow ``src`` to ``n_layers`` layers following ``dmap``."""
    if any(dmap.silenced) and is_post_norm(src):
        warnings.warn(
            f"{src.family} is post-norm: inserted layers keep their LayerNorms, so identity insertion "
            "preserves the function only where those norms are the identity",
            stacklevel=2,
        )
    index = torch.tensor(dmap.source)
    keep = torch.tensor([not s for s in dmap.silenced])
    out = {}
    for name in src.tensors:
        t = src.tensors[name]
        if src.specs[name][0] == "L":
            t = t.index_select(0, index)
            if name in RESIDUAL_OUTPUTS:
                t = t * keep.view((-1,) + (1,) * (t.dim() - 1)).to(t.dtype)
        out[name] = t
    d = src.dims
    grown = src.with_tensors(out, Dims(d.hidden, d.ffn, d.heads, d.kv_heads, d.head_dim, n_layers))
    # which source layer each layer copies: an adapter gives a copy its source's attention type
    before = src.extra.get("layer_source", tuple(range(d.layers)))
    grown.extra = {**src.extra, "layer_source": tuple(before[s] for s in dmap.source)}
    return grown
