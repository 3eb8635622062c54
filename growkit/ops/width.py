"""Width growth by unit copying: Net2Net / bert2BERT-FPI, AKI, and exact tiling.

A :class:`WidthMap` says, for every growable axis, which source unit each target
unit copies. Applying it to a canonical tensor copies ``.out`` entries and divides
``.in`` entries by the copy count, so each widened linear map computes the same
sums (Net2Net's argument). Heads are copied whole and head_dim never changes;
under GQA each query head stays in the group of the kv head its source was in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.canonical import GROWABLE, Canonical, Dims, parse_axis
from ..core.errors import GrowError

Tensor = torch.Tensor


def _select(n_old: int, n_new: int, strategy: str, gen: torch.Generator) -> Tensor:
    """Source index for each of ``n_new`` units: old units first, then copies."""
    if strategy == "tile":
        if n_new % n_old:
            raise GrowError(
                f"exact width needs an integer growth factor, but {n_new} is not a multiple of {n_old}; "
                "use net2net or bert2bert for other sizes"
            )
        return torch.arange(n_new) % n_old
    if strategy == "balanced":  # every unit copied floor or ceil(n_new / n_old) times, the copies in random order
        rounds = [torch.randperm(n_old, generator=gen) for _ in range(-(-n_new // n_old) - 1)]
        extra = torch.cat([torch.empty(0, dtype=torch.long), *rounds])[: n_new - n_old]
    else:
        extra = torch.randint(0, n_old, (n_new - n_old,), generator=gen)
    return torch.cat([torch.arange(n_old), extra])


def uneven_factors(src: Dims, tgt: Dims) -> str:
    """Every size whose growth factor is not a whole number, for a message ('' when tiling fits)."""
    sizes = [("hidden size", src.hidden, tgt.hidden), ("FFN size", src.ffn, tgt.ffn),
             ("attention heads (head counts)", src.heads, tgt.heads)]
    if (src.kv_heads, tgt.kv_heads) != (src.heads, tgt.heads):  # grouped-query attention
        sizes += [("kv heads (head counts)", src.kv_heads, tgt.kv_heads),
                  ("query heads per kv head", src.heads // src.kv_heads, tgt.heads // tgt.kv_heads)]
    bad = [f"{what} {old} -> {new} (x{new / old:.3g})" for what, old, new in sizes if new % old]
    return f"{'; '.join(bad)} {'is' if len(bad) == 1 else 'are'} not" if bad else ""


def check_factors(src: Dims, tgt: Dims, note: str = "") -> None:
    """Refuse, naming every offending size, a tiling whose growth factors are not whole numbers.

    ``note`` says whether zero-extension, which grows to any size, applies instead.
    """
    bad = uneven_factors(src, tgt)
    if bad:
        raise GrowError(
            f"exact width needs an integer growth factor for every size, but {bad}"
            f"{'; ' + note if note else ''}; choose whole multiples of the source's sizes, "
            "or use net2net or bert2bert, which copy units at random"
        )


def _counts(index: Tensor, n_old: int) -> Tensor:
    """How many target units copy the source unit of each target unit."""
    per_source = torch.bincount(index, minlength=n_old).to(torch.float64)
    return per_source[index]


@dataclass
class AxisMap:
    """Target-to-source unit index along one axis, and each target unit's copy count."""

    index: Tensor
    count: Tensor
    n_old: int

    @classmethod
    def from_index(cls, index: Tensor, n_old: int) -> "AxisMap":
        return cls(index, _counts(index, n_old), n_old)

    def is_identity(self) -> bool:
        return len(self.index) == self.n_old


@dataclass
class WidthMap:
    axes: dict[str, AxisMap]

    @classmethod
    def build(cls, src: Dims, tgt: Dims, strategy: str, gen: torch.Generator) -> "WidthMap":
        """Choose copies for hidden, FFN and heads; ``strategy`` is ``"random"`` (with replacement, as Net2Net),
        ``"balanced"`` (without: every unit copied as evenly as the sizes allow) or ``"tile"``."""
        if strategy == "tile":
            check_factors(src, tgt)
        hd = src.head_dim
        kv_index = _select(src.kv_heads, tgt.kv_heads, strategy, gen)
        group_src, group_tgt = src.heads // src.kv_heads, tgt.heads // tgt.kv_heads
        within = _select(group_src, group_tgt, strategy, gen)
        q_heads = (kv_index[:, None] * group_src + within[None, :]).reshape(-1)
        axes = {
            "D": AxisMap.from_index(_select(src.hidden, tgt.hidden, strategy, gen), src.hidden),
            "F": AxisMap.from_index(_select(src.ffn, tgt.ffn, strategy, gen), src.ffn),
            "Q": AxisMap.from_index(_units(q_heads, hd), src.heads * hd),
            "K": AxisMap.from_index(_units(kv_index, hd), src.kv_heads * hd),
        }
        return cls(axes)


def _units(heads: Tensor, head_dim: int) -> Tensor:
    """Expand a head-level index to unit level (whole heads are copied)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _grown_axes(spec: tuple[str, ...], wmap: WidthMap):
    for dim, token in enumerate(spec):
        axis, side = parse_axis(token)
        if axis in GROWABLE and not wmap.axes[axis].is_identity():
            yield dim, wmap.axes[axis], side


def widen_tensor(t: Tensor, spec: tuple[str, ...], wmap: WidthMap) -> Tensor:
    """Copy ``.out`` units and split ``.in`` units by their copy count."""
    for dim, amap, side in _grown_axes(spec, wmap):
        t = t.index_select(dim, amap.index)
        if side == "in":
            shape = [1] * t.dim()
            shape[dim] = -1
            t = t / amap.count.to(t.dtype).view(shape)
    return t


def cancelling_noise(t: Tensor, spec: tuple[str, ...], wmap: WidthMap, scale: float, gen: torch.Generator) -> Tensor:
    """Noise on the ``.in`` side of a matrix that sums to zero over each group of copies.

    The copies of a unit see identical inputs, so the noise cancels exactly in the
    output while it makes the copies' gradients differ (it breaks symmetry).
    """
    in_axes = [(dim, amap) for dim, amap, side in _grown_axes(spec, wmap) if side == "in"]
    if scale == 0 or len(spec) - spec.count("L") < 2 or not in_axes:
        return torch.zeros_like(t)
    dim, amap = in_axes[0]
    noise = torch.randn(t.shape, generator=gen, dtype=torch.float64) * scale
    moved = noise.movedim(dim, 0)
    sums = torch.zeros((amap.n_old,) + moved.shape[1:], dtype=torch.float64).index_add_(0, amap.index, moved)
    mean = sums.index_select(0, amap.index) / amap.count.view((-1,) + (1,) * (moved.dim() - 1))
    return (moved - mean).movedim(0, dim).to(t.dtype)


def width_start(
    src: Canonical, tgt_dims: Dims, strategy: str = "random", *, noise: float = 0.0, seed: int = 0
) -> tuple[WidthMap, dict[str, Tensor]]:
    """The copy map and the per-tensor cancelling noise that :func:`widen` applies for ``seed``.

    Exposed so that a learned operator can start exactly where a fixed one ends.
    """
    gen = torch.Generator().manual_seed(seed)
    wmap = WidthMap.build(src.dims, _width_dims(src, tgt_dims), strategy, gen)
    noises: dict[str, Tensor] = {}
    if noise:
        for name, t in src.tensors.items():
            scale = noise * float(t.double().std()) if t.numel() > 1 else 0.0
            shape = src.expected_shape(name, _width_dims(src, tgt_dims))
            noises[name] = cancelling_noise(t.new_empty(shape), src.specs[name], wmap, scale, gen)
    return wmap, noises


def _width_dims(src: Canonical, tgt_dims: Dims) -> Dims:
    """``tgt_dims`` with the source's number of layers."""
    return Dims(tgt_dims.hidden, tgt_dims.ffn, tgt_dims.heads, tgt_dims.kv_heads, tgt_dims.head_dim, src.dims.layers)


def widen(
    src: Canonical,
    tgt_dims: Dims,
    strategy: str = "random",
    *,
    noise: float = 0.0,
    knowledge_from_next_layer: bool = False,
    seed: int = 0,
) -> Canonical:
    """Grow every width of ``src`` to ``tgt_dims`` (layers unchanged).

    ``noise`` is relative to each matrix's standard deviation. With
    ``knowledge_from_next_layer`` (bert2BERT AKI) the new output units of layer l
    take their weights from layer l+1 (the last layer from itself).
    """
    wmap, noises = width_start(src, tgt_dims, strategy, noise=noise, seed=seed)
    out: dict[str, Tensor] = {}
    for name, t in src.tensors.items():
        spec = src.specs[name]
        grown = widen_tensor(t, spec, wmap)
        if knowledge_from_next_layer and spec[0] == "L":
            grown = torch.where(_new_output_units(grown, spec, wmap), _next_layer(grown), grown)
        if name in noises:
            grown = grown + noises[name]
        out[name] = grown
    return src.with_tensors(out, _width_dims(src, tgt_dims))


@dataclass(frozen=True)
class WidthOperator:
    """A registered width operator: how units are chosen, its default noise, and whether new units borrow (AKI)."""

    name: str
    strategy: str  #: "random" copies (Net2Net) or "tile" (exact, integer factors)
    noise: float = 0.0  #: the default symmetry-breaking noise, relative to each matrix's std
    knowledge_from_next_layer: bool = False  #: bert2BERT AKI: new output units read layer l+1

    def check(self, src: Dims, tgt: Dims, *, family: str, rms_norm: bool) -> None:
        """Refuse, from the sizes alone and before any weight is read, sizes this operator cannot reach."""
        if self.strategy == "tile":
            check_factors(src, tgt, note="width 'zero' (exact's choice here) grows RMSNorm models to any size"
                          if rms_norm else "")

    def start(self, src: Canonical, tgt_dims: Dims, *, noise: float | None = None,
              seed: int = 0) -> tuple[WidthMap, dict[str, Tensor]]:
        """The copy map and the cancelling noise this operator applies (see :func:`width_start`)."""
        return width_start(src, tgt_dims, self.strategy, noise=self.noise if noise is None else noise, seed=seed)

    def __call__(self, src: Canonical, tgt_dims: Dims, *, noise: float | None = None, seed: int = 0) -> Canonical:
        return widen(src, tgt_dims, self.strategy, noise=self.noise if noise is None else noise,
                     knowledge_from_next_layer=self.knowledge_from_next_layer, seed=seed)


#: the unit-copying width operators (zero-extension is the other kind: :mod:`~growkit.ops.zero_width`)
COPYING_OPERATORS: dict[str, WidthOperator] = {op.name: op for op in (
    WidthOperator("net2net", "random", noise=0.01),
    WidthOperator("aki", "random", knowledge_from_next_layer=True),
    WidthOperator("tile", "tile", noise=0.01),
)}


def _next_layer(t: Tensor) -> Tensor:
    order = torch.clamp(torch.arange(t.shape[0]) + 1, max=t.shape[0] - 1)
    return t.index_select(0, order)


def _new_output_units(t: Tensor, spec: tuple[str, ...], wmap: WidthMap) -> Tensor:
    """Boolean mask (broadcastable to ``t``) of entries that belong to a new output unit."""
    mask = torch.zeros((1,) * t.dim(), dtype=torch.bool)
    for dim, amap, side in _grown_axes(spec, wmap):
        if side == "out":
            shape = [1] * t.dim()
            shape[dim] = -1
            mask = mask | (torch.arange(len(amap.index)) >= amap.n_old).view(shape)
    return mask
