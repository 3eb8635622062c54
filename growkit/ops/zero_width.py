"""Exact width growth to any size for RMSNorm models: extend the residual stream with zeros.

Tiling (:mod:`~growkit.ops.width`) keeps the function only for whole growth
factors. When every norm is an RMSNorm, a target of any larger width can start
from exactly the source's function:

- **Residual stream.** Every writer of the residual stream (token embedding,
  attention output ``o``, MLP output ``mlp_out`` and their biases) gets zero
  entries for the D2 - D1 new dimensions, so the hidden state is ``[x; 0]`` at
  every layer. Readers (q, k, v, the MLP's input projections, an untied LM head)
  may hold anything in their new input rows: they multiply zeros.
- **Norms.** RMSNorm computes ``g * x / sqrt(mean(x^2) + eps)``. Over D2
  dimensions of ``[x; 0]`` the mean square is ``(D1/D2) * mean(x^2)`` (the sum is
  unchanged, the count grows). With ``c = D1/D2`` and ``eps' = c * eps``::

      sqrt(c * mean(x^2) + c * eps) = sqrt(c) * sqrt(mean(x^2) + eps)

  so every old dimension is normalised to ``x / (sqrt(c) * rms)``, and a gain
  ``g' = sqrt(c) * g`` gives back ``g * x / rms`` exactly; new dimensions stay
  ``g'_new * 0 = 0``. Hence every norm gain (old entries) is multiplied by
  ``sqrt(c)`` and the config's ``rms_norm_eps`` by ``c``: the scale travels in
  the canonical view's ``extra["rms_norm_eps_scale"]`` and the adapter writes it
  into the grown model's config, so ``save_pretrained`` keeps it. The new
  dimensions' gains do not change the function; they copy the scaled gains
  (unit d copies d mod D1) so that gradients reach the new dimensions.
- **Heads and FFN units.** New query heads, kv heads and FFN units write zero
  into the residual stream: their rows of ``o`` and ``mlp_out`` are zero. Their
  inputs may be anything; the grown model's output does not depend on them.
  Under GQA, query head j of kv group g keeps its group: target group g holds
  the source's query heads of group g first and new heads after them, and new kv
  heads serve only new query heads, so a group may grow (4/2 -> 6/3, 4/2 -> 6/2)
  but not shrink (each old query head must stay with its own kv head).
- **Tied embeddings.** The LM head is the token embedding, whose new columns are
  zero; it reads only the new dimensions of the final norm's output, which are
  zero too. Both sides agree, so the logits are unchanged.
- **Depth.** New layers are identity layers (:mod:`~growkit.ops.depth`): their
  residual outputs are zero, which is exact in pre-norm blocks.

What the free entries hold (``new_weights``): ``"random"`` (default) draws each
new reader row and new unit's inputs from N(0, (noise * std)^2), with std that
of the source tensor, like a fresh initialisation of the added part; ``"copy"``
copies old rows and units (unit u copies u mod n) as tiling would. Biases of new
units are zero. Both start exactly at the source's function. Random inputs break
symmetry: new units compute features of their own from the first step, while
copies start as duplicates of old units and only drift apart through their
zero-started output weights (see BENCHMARKS.md, "Zero-extension").

LayerNorm subtracts the mean over all D2 dimensions: the zeros move the mean and
the variance of the old dimensions by amounts that depend on the input, so no
rescaling of the gain, the bias or eps restores them. LayerNorm models are
refused. Norms on a branch's output (Gemma's post-norms) see ``[y; 0]`` as well
and are rescaled the same way. (Gemma's norms scale by 1 + w, not w: its
adapter hands the canonical view the effective gain ``1 + w``, so this
rescaling holds.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.canonical import GROWABLE, Canonical, Dims, parse_axis
from ..core.errors import GrowError

Tensor = torch.Tensor
#: the norm gains: scaled by sqrt(D1/D2) (the roles are the same in every family)
NORM_GAINS = ("layer.norm1", "layer.norm2", "layer.post_attn_norm", "layer.post_mlp_norm", "final_norm", "emb_norm",
              "head_norm")
NEW_WEIGHTS = ("random", "copy")


def zero_extend(
    src: Canonical, tgt_dims: Dims, *, new_weights: str = "random", noise: float = 1.0, seed: int = 0
) -> Canonical:
    """Grow every width of ``src`` to ``tgt_dims`` (layers unchanged) so that the function is unchanged.

    ``new_weights`` chooses what the entries that read zeros hold (see the module
    docstring); ``noise`` is the std of random ones relative to each source tensor's
    std. ``src`` must come from an RMSNorm model.
    """
    if new_weights not in NEW_WEIGHTS:
        raise GrowError(f"new_weights must be one of {', '.join(NEW_WEIGHTS)}, got {new_weights!r}")
    if not src.extra.get("rms_norm"):
        raise GrowError(layer_norm_refusal(src.family))
    dims = Dims(tgt_dims.hidden, tgt_dims.ffn, tgt_dims.heads, tgt_dims.kv_heads, tgt_dims.head_dim, src.dims.layers)
    axes = _axes(src.dims, dims)
    gen = torch.Generator().manual_seed(seed)
    c = src.dims.hidden / dims.hidden
    out = {}
    for name, t in src.tensors.items():
        spec = src.specs[name]
        grown = _gather(t, spec, axes)
        new = _mask(spec, axes, lambda axis, side: True)
        if name in NORM_GAINS:
            grown = grown * math.sqrt(c)
        elif new.any():
            if not _is_matrix(spec):
                free = torch.zeros_like(grown)  # biases of new units
            else:
                free = _fresh(t, grown.shape, noise, gen) if new_weights == "random" else grown
            zero = _mask(spec, axes, _writes_to_residual)
            grown = torch.where(zero, torch.zeros_like(grown), torch.where(new, free, grown))
        out[name] = grown
    grown = src.with_tensors(out, dims)
    grown.extra = {**src.extra, "rms_norm_eps_scale": src.extra.get("rms_norm_eps_scale", 1.0) * c}
    return grown


def layer_norm_refusal(family: str) -> str:
    """Why zero-extension cannot keep a LayerNorm model's function."""
    return (
        f"{family} uses LayerNorm, which subtracts the mean over every dimension: zero-extended new dimensions "
        "would move the old dimensions' mean and variance by input-dependent amounts, so exact growth to a "
        "non-multiple width exists only for RMSNorm models"
    )


def check_query_groups(src: Dims, tgt: Dims) -> None:
    """Refuse query groups that shrink: every old query head must keep its own kv head."""
    group_src, group_tgt = src.heads // src.kv_heads, tgt.heads // tgt.kv_heads
    if group_tgt < group_src:
        raise GrowError(
            f"query heads per kv head would shrink from {group_src} to {group_tgt} "
            f"({src.heads}/{src.kv_heads} -> {tgt.heads}/{tgt.kv_heads} heads): exact growth keeps every old query "
            f"head with its own kv head; choose at most {tgt.heads // group_src} kv heads"
        )


@dataclass(frozen=True)
class ZeroWidthOperator:
    """A registered width operator of the second kind: zero-extension, exact at any width on RMSNorm models."""

    name: str
    new_weights: str = "random"  #: what entries that read zeros hold (see the module docstring)
    noise: float = 1.0  #: the std of random new inputs, relative to each source tensor's std

    def check(self, src: Dims, tgt: Dims, *, family: str, rms_norm: bool) -> None:
        """Refuse LayerNorm models and shrinking query groups, from the sizes alone, before any weight is read."""
        if not rms_norm:
            raise GrowError(f"width operator {self.name}: {layer_norm_refusal(family)}")
        check_query_groups(src, tgt)

    def __call__(self, src: Canonical, tgt_dims: Dims, *, noise: float | None = None, seed: int = 0) -> Canonical:
        return zero_extend(src, tgt_dims, new_weights=self.new_weights, noise=self.noise if noise is None else noise,
                           seed=seed)


ZERO = ZeroWidthOperator("zero")


def _writes_to_residual(axis: str, side: str | None) -> bool:
    """Entries that must be zero: the residual stream's new dimensions, and what new heads and units write."""
    return (axis == "D" and side == "out") or (axis in ("Q", "F") and side == "in")


def _is_matrix(spec: tuple[str, ...]) -> bool:
    return len([token for token in spec if token != "L"]) >= 2


def _fresh(t: Tensor, shape: torch.Size, scale: float, gen: torch.Generator) -> Tensor:
    std = float(t.double().std()) if t.numel() > 1 else 0.0
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * (scale * std)).to(t.dtype)


class _Axis:
    """Along one axis: the source unit each target unit reads (old: itself; new: a copy) and which are new."""

    def __init__(self, source: Tensor, new: Tensor):
        self.source, self.new = source, new

    @classmethod
    def appended(cls, n_old: int, n_new: int) -> "_Axis":
        index = torch.arange(n_new)
        return cls(index % n_old, index >= n_old)


def _axes(src: Dims, tgt: Dims) -> dict[str, _Axis]:
    """Old units first on D, F and K; query heads kept in their kv head's group, new heads after them."""
    check_query_groups(src, tgt)
    group_src, group_tgt = src.heads // src.kv_heads, tgt.heads // tgt.kv_heads
    group = torch.arange(tgt.heads) // group_tgt
    within = torch.arange(tgt.heads) % group_tgt
    new_heads = (group >= src.kv_heads) | (within >= group_src)
    head_source = (group % src.kv_heads) * group_src + within % group_src
    kv = _Axis.appended(src.kv_heads, tgt.kv_heads)
    return {
        "D": _Axis.appended(src.hidden, tgt.hidden),
        "F": _Axis.appended(src.ffn, tgt.ffn),
        "Q": _Axis(_units(head_source, src.head_dim), _units(new_heads, src.head_dim)),
        "K": _Axis(_units(kv.source, src.head_dim), _units(kv.new, src.head_dim)),
    }


def _units(per_head: Tensor, head_dim: int) -> Tensor:
    """A per-head index or mask at unit level (heads keep head_dim)."""
    if per_head.dtype == torch.bool:
        return per_head.repeat_interleave(head_dim)
    return (per_head[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _gather(t: Tensor, spec: tuple[str, ...], axes: dict[str, _Axis]) -> Tensor:
    for dim, token in enumerate(spec):
        axis, _ = parse_axis(token)
        if axis in GROWABLE:
            t = t.index_select(dim, axes[axis].source)
    return t


def _mask(spec: tuple[str, ...], axes: dict[str, _Axis], where) -> Tensor:
    """Boolean mask (broadcastable to the grown tensor): entries on a new unit of an axis ``where`` selects."""
    mask = torch.zeros((1,) * len(spec), dtype=torch.bool)
    for dim, token in enumerate(spec):
        axis, side = parse_axis(token)
        if axis in GROWABLE and where(axis, side):
            shape = [1] * len(spec)
            shape[dim] = -1
            mask = mask | axes[axis].new.view(shape)
    return mask
