"""Mango: the multi-linear growth operator (Pan et al., NeurIPS 2023, arXiv 2310.10699).

Packing. Every per-layer matrix of the canonical view (spec ``L, X.in, Y.out``)
is cut into D x D tiles in math orientation and the tiles are stacked into
``M[b, i, o, l]`` (B x D x D x L). Matrices go in the order q, k, v, (gate), mlp_in,
o, mlp_out, so B = 4 + 2 ceil(F/D) for a GELU MLP and 4 + 3 ceil(F/D) for SwiGLU.
Where a unit sits in its tile is chosen so that every fixed start below is one
Kronecker pattern shared by all tiles:

- D and Q (heads x head_dim, which must equal D) fill one tile in order.
- K (kv heads) is spread over a Q-wide tile: kv head g sits where query head
  g * group sits, the first head of its group. With K packed contiguously, one
  pattern cannot grow the query heads and keep every head in its kv group.
- F is strided: unit f sits in tile f mod n at position f // n (n = ceil(F/D)),
  so that tiling F (unit f2 copies f2 mod F1) is a tile pattern, and the cut pads
  the end of each tile with zeros. The source is packed into M1 and the target is
  unpacked (cropped) from M2 the same way.

The map. Four tensor-ring cores S_B (R x B1 x B2 x R), S_I, S_O (R x D1 x D2 x R)
and S_L (R x L1 x L2 x R) give ``M2[b2,i2,o2,l2] = sum M1[b1,i1,o1,l1]
Tr(S_B[:,b1,b2,:] S_I[:,i1,i2,:] S_O[:,o1,o2,:] S_L[:,l1,l2,:])``, contracted by
:func:`ring_map` without building the map. The cores are the only parameters:
R^2 (B1 B2 + 2 D1 D2 + L1 L2) (:func:`parameter_count`).

Vectors and globals use the same cores and add no parameters. Every other
tensor is placed in the same index space: its ``.in`` axis (if any) is tiled like
a matrix row, its ``.out`` axis like a column, its layer axis is L, and the ring
is closed with the same four cores, where an absent axis takes its core
collapsed to an R x R matrix, chosen so that it is 1 on every term of every start:

- no ``.in`` axis: S_I at source unit 0 summed over target units (a unit's
  outgoing mass: 1 for any split);
- no ``.out`` axis: S_O at target unit 0 summed over source units (a unit's
  incoming mass: 1 for any copy; unit 0 is never a new unit, which AKI needs);
- no layer axis (globals): S_L at target layer 0 summed over source layers;
- S_B is read at the tiles of a *home* matrix: a bias's own matrix (``o_bias``
  -> o), otherwise the first packed matrix with the tensor's multi-tile axes on
  the same sides, which for the D-only norms and embeddings is q. An absent side
  collapses over its tiles the same way (row tile 0 summed over target row
  tiles; target column tile 0 summed over source column tiles). Reading o's and
  mlp_out's tiles is what silences their biases with their matrices.

Tensors with no growable axis and no layer axis (vocab or label biases) are copied.

Start. Each start is a sum of c Kronecker terms placed on the ring's diagonal
(c <= R), and the first materialisation equals that fixed operator exactly:

- Width. S_O copies units, S_I splits them by their copy count (Net2Net/bert2BERT
  FPI), one pattern on every tile, so the selection is head-aligned: growkit's
  own GQA-aware head map (:class:`~growkit.ops.width.WidthMap`), applied to the
  hidden units, to the positions inside every FFN and attention tile, and to the
  kv heads through the spread K layout. S_B copies whole tiles (identity when
  ceil(F/D) is unchanged), splitting ``.in`` tiles by their copy count.
- Depth. S_L is the stacking or interpolation matrix. Identity insertion zeroes
  the copies' residual outputs (o, mlp_out and biases): a second term whose S_B
  keeps only those tiles and whose S_L drops the silenced layers, while the
  first keeps the other tiles with all layers.
- AKI (new units take layer l+1's weights) is a second term with S_O on the new
  units only and S_L shifted by one source layer.
- Symmetry. Copies made by one Kronecker pattern stay identical under gradient
  descent (at R = 1 forever), so ``noise`` (default: the fixed method's, 0.01,
  or 0 for AKI, which breaks symmetry with knowledge) adds to every term's S_I
  noise that sums to zero over each group of copies: the copies see equal
  inputs, so it cancels and the start computes the same function.
- Extra rank. Ring slices beyond c start with S_B = 0 and random S_I, S_O, S_L
  (unit gain); the strictly upper ring entries of S_I and S_O are random too and
  S_L is ring-diagonal. Every path through the ring other than the start's terms
  meets a zero, so the output is exact, yet every core gets gradients (as in
  LoRA's zero-initialised factor), and the random S_I/S_O entries break symmetry.

Reachable fixed methods (``init=``; ``grow_fixed`` with the registry's width and
depth, ``noise=0``, and Mango's selection; see :attr:`MangoOperator.copy_map`). The
default ``rank=None`` takes the start's min. rank, so ``init=net2net`` alone gives rank 2:

=============  ==========  ====================================================
init           min. rank   note
=============  ==========  ====================================================
stackbert      1           Net2Net width, stacked layers (default)
interpolate    1           Net2Net width, layers repeated in place
net2net        2           Net2Net width, identity insertion (two terms; 1 if
                           no layer is added)
bert2bert      2           AKI width (two terms; 1 if no unit is added), stacked
exact          2           tiled width, identity insertion (1 if no layer is
                           added); equals ``grow_fixed(..., "tile", "identity",
                           noise=0)`` bit for bit when D1 | D2, D | F with the same
                           F/D ratio and the GQA group size is unchanged
=============  ==========  ====================================================

Not reachable: growkit's own ``net2net`` selection (it draws hidden and FFN units
independently and per unit, which shared S_I/S_O cannot express), the fixed
operators' per-entry cancelling noise (not a Kronecker pattern), and LiGO's
per-layer width matrices. Refused: heads x head_dim != hidden (heads would not
fit the tiles) and query groups that shrink. When F is not a multiple of D, or
ceil(F/D) shrinks, tiles are padded or dropped and the start is Net2Net only
approximately (a warning says so).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..core.canonical import GROWABLE, Canonical, Dims, parse_axis
from ..core.errors import GrowError
from ..core.catalog import CATALOG
from .depth import RESIDUAL_OUTPUTS, is_post_norm
from .mango_chunks import Workspace
from .mango_contract import MAX_ELEMENTS, ring_map, ring_map_split, ring_path, source_layout
from .operator import GrowthOperator
from .registry import Method, fixed_methods
from .width import AxisMap, WidthMap

Tensor = torch.Tensor
DEFAULT_INIT = "stackbert"
#: packing order: residual-branch outputs last, so that q anchors the D-only tensors
ORDER = ("layer.q", "layer.k", "layer.v", "layer.mlp_gate", "layer.mlp_in", "layer.o", "layer.mlp_out")
#: the fixed methods a start can equal, and the learned ones it cannot, with why
UNREACHABLE = {
    "ligo": "LiGO's width matrices differ per layer and role, while Mango's width cores are shared by every tile",
    "mango": "a start is a fixed method",
}


# --- packing ------------------------------------------------------------------
@dataclass(frozen=True)
class AxisLayout:
    """Where the ``units`` of one axis sit in ``tiles`` tiles of ``width`` (zeros elsewhere).

    In order by default. ``spread``: the units come in blocks of ``block`` (kv heads)
    and block j sits at block slot j * spread. ``strided``: unit f sits in tile
    f mod tiles at position f // tiles. Both are reshapes, not gathers: on large
    tensors they cost a copy at most (D and Q tiles are views).
    """

    tiles: int
    width: int
    units: int
    block: int = 1
    spread: int = 1
    strided: bool = False

    def pack(self, t: Tensor, dim: int) -> Tensor:
        """Axis ``dim`` (the units) -> two axes (tiles, width)."""
        x = t.movedim(dim, -1)
        if self.spread > 1:
            x = nn.functional.pad(x.unflatten(-1, (-1, 1, self.block)), (0, 0, 0, self.spread - 1)).flatten(-3)
        x = nn.functional.pad(x, (0, self.tiles * self.width - x.shape[-1]))
        if self.strided:
            x = x.unflatten(-1, (self.width, self.tiles)).transpose(-1, -2)
        else:
            x = x.unflatten(-1, (self.tiles, self.width))
        return x.movedim((-2, -1), (dim, dim + 1))

    def unpack(self, t: Tensor, dim: int) -> Tensor:
        """Axes ``dim, dim + 1`` (tiles, width) -> the units (padding is cropped)."""
        x = t.movedim((dim, dim + 1), (-2, -1))
        x = _merge_last_two(x.transpose(-1, -2) if self.strided else x)
        if self.spread > 1:
            x = x[..., : self.units * self.spread].unflatten(-1, (-1, self.spread, self.block))[..., 0, :].flatten(-2)
        return x[..., : self.units].movedim(-1, dim)


UNIT = AxisLayout(1, 1, 1)


def _merge_last_two(x: Tensor) -> Tensor:
    """``x.flatten(-2)``; where that copies, the copy keeps ``x``'s memory order for the other axes.

    A strided F axis merges (width, tiles) whose tiles lie far apart in memory; a plain
    flatten writes them innermost and reads a new page per element (10x slower on
    GPT-2's MLP tiles than a copy that streams the rows).
    """
    try:
        return x.view(*x.shape[:-2], -1)
    except RuntimeError:
        pass
    outer = sorted(range(x.dim() - 2), key=lambda d: -x.stride(d))
    at = sum(x.stride(d) > x.stride(-2) for d in outer)
    perm = outer[:at] + [x.dim() - 2, x.dim() - 1] + outer[at:]
    merged = x.permute(perm).contiguous().flatten(at, at + 1)
    order = outer[:at] + [x.dim() - 2] + outer[at:]
    return merged.permute(sorted(range(len(order)), key=order.__getitem__))


def axis_layouts(dims: Dims) -> dict[str, AxisLayout]:
    """The D-wide tiling of every growable axis (see the module docstring)."""
    d, q = dims.hidden, dims.axis("Q")
    return {
        "D": AxisLayout(1, d, d),
        "Q": AxisLayout(math.ceil(q / d), d, q),
        "K": AxisLayout(math.ceil(q / d), d, dims.axis("K"), dims.head_dim, dims.heads // dims.kv_heads),
        "F": AxisLayout(math.ceil(dims.ffn / d), d, dims.ffn, strided=True),
    }


@dataclass(frozen=True)
class Placement:
    """How a canonical tensor maps onto the ring's index space ``[lead..., tile, in, out, layer]``.

    ``perm`` orders its dims as lead (never-grown axes), in, out, layer.
    """

    perm: tuple[int, ...]
    lead: int
    in_axis: str | None
    out_axis: str | None
    layered: bool

    @classmethod
    def of(cls, name: str, spec: tuple[str, ...]) -> "Placement":
        lead, sides = [], {"in": [], "out": []}
        for dim, token in enumerate(spec):
            axis, side = parse_axis(token)
            if axis in GROWABLE:
                sides[side].append((dim, axis))
            elif axis != "L":
                lead.append(dim)
        if len(sides["in"]) > 1 or len(sides["out"]) > 1:
            raise GrowError(f"Mango maps at most one .in and one .out axis per tensor; {name} has spec {spec}")
        dims = lead + [d for d, _ in sides["in"]] + [d for d, _ in sides["out"]] + ([0] if spec[0] == "L" else [])
        return cls(
            tuple(dims),
            len(lead),
            sides["in"][0][1] if sides["in"] else None,
            sides["out"][0][1] if sides["out"] else None,
            spec[0] == "L",
        )

    @property
    def is_matrix(self) -> bool:
        return self.layered and self.lead == 0 and self.in_axis is not None and self.out_axis is not None

    @property
    def grown(self) -> bool:
        return self.layered or self.in_axis is not None or self.out_axis is not None

    def layouts(self, layouts: dict[str, AxisLayout]) -> tuple[AxisLayout, AxisLayout]:
        return layouts.get(self.in_axis, UNIT), layouts.get(self.out_axis, UNIT)

    def pack(self, t: Tensor, layouts: dict[str, AxisLayout]) -> Tensor:
        """``t`` -> ``[lead..., tile, in, out, layer]`` with size-1 axes where it has none."""
        lay_in, lay_out = self.layouts(layouts)
        x, k = t.permute(self.perm), self.lead
        x = x if self.in_axis else x.unsqueeze(k)
        x = x if self.out_axis else x.unsqueeze(k + 1)
        x = x if self.layered else x.unsqueeze(-1)
        x = lay_out.pack(lay_in.pack(x, k), k + 2)  # [lead, t_in, w_in, t_out, w_out, layer]
        return x.transpose(k + 1, k + 2).flatten(k, k + 1)

    def unpack(self, y: Tensor, layouts: dict[str, AxisLayout]) -> Tensor:
        """Inverse of :meth:`pack` at ``layouts`` (padding cropped)."""
        lay_in, lay_out = self.layouts(layouts)
        k = self.lead
        y = y.unflatten(k, (lay_in.tiles, lay_out.tiles)).transpose(k + 1, k + 2)
        y = lay_in.unpack(lay_out.unpack(y, k + 2), k)
        y = y if self.layered else y.squeeze(-1)
        y = y if self.out_axis else y.squeeze(k + 1)
        y = y if self.in_axis else y.squeeze(k)
        return y.permute(tuple(torch.argsort(torch.tensor(self.perm)).tolist()))


class Packing:
    """The tile grid of one side (source or target): which block index each matrix tile has."""

    def __init__(self, placements: dict[str, Placement], dims: Dims):
        self.dims = dims
        self.layouts = axis_layouts(dims)
        matrices = [n for n, p in placements.items() if p.is_matrix]
        rank = {name: i for i, name in enumerate(ORDER)}
        self.matrices = sorted(matrices, key=lambda n: (n in RESIDUAL_OUTPUTS, rank.get(n, len(ORDER))))
        self.grid: dict[str, tuple[int, int]] = {}
        self.offset: dict[str, int] = {}
        self.sides: dict[str, dict[str, str]] = {}
        blocks = 0
        for name in self.matrices:
            p = placements[name]
            self.grid[name] = (self.layouts[p.in_axis].tiles, self.layouts[p.out_axis].tiles)
            self.sides[name] = {"in": p.in_axis, "out": p.out_axis}
            self.offset[name] = blocks
            blocks += self.grid[name][0] * self.grid[name][1]
        self.blocks = blocks

    def tiles(self, name: str) -> slice:
        return slice(self.offset[name], self.offset[name] + self.grid[name][0] * self.grid[name][1])


def _placements(source: Canonical) -> dict[str, Placement]:
    return {name: Placement.of(name, spec) for name, spec in source.specs.items()}


def _home(name: str, p: Placement, src: Packing, tgt: Packing) -> str:
    """The matrix whose S_B tiles a non-matrix tensor reads (see the module docstring)."""
    own = name.removesuffix("_bias")
    if own != name and own in src.matrices and p.in_axis is None and src.sides[own]["out"] == p.out_axis:
        return own
    need = {
        side: axis
        for side, axis in (("in", p.in_axis), ("out", p.out_axis))
        if axis is not None and max(src.layouts[axis].tiles, tgt.layouts[axis].tiles) > 1
    }
    for matrix in src.matrices:
        if all(src.sides[matrix][side] == axis for side, axis in need.items()):
            return matrix
    raise GrowError(f"Mango: no packed matrix has {name}'s axes {need} to share its tiles with")


def _blocks(source: Canonical, target_dims: Dims) -> tuple[int, int]:
    placements = _placements(source)
    return Packing(placements, source.dims).blocks, Packing(placements, target_dims).blocks


def start_rank(init: str, source: Dims, target: Dims) -> int:
    """The number of Kronecker terms of the start ``init`` (the default rank), without building it."""
    method = fixed_methods()[init]
    silenced = any(method.depth_operator.layer_map(source.layers, target.layers).silenced)
    borrows = method.width_operator.knowledge_from_next_layer and target.hidden > source.hidden
    return (2 if silenced else 1) * (2 if borrows else 1)


def parameter_count(source: Canonical, target_dims: Dims, rank: int | None = None, init: str = DEFAULT_INIT,
                    noise: float | None = None) -> int:
    """The Mango operator's parameter count, R^2 (B1 B2 + 2 D1 D2 + L1 L2), without building it."""
    rank = start_rank(init, source.dims, target_dims) if rank is None else rank
    (b1, b2), s, t = _blocks(source, target_dims), source.dims, target_dims
    return rank * rank * (b1 * b2 + 2 * s.hidden * t.hidden + s.layers * t.layers)


def materialize_flops(source: Canonical, target_dims: Dims, rank: int | None = None, init: str = DEFAULT_INIT,
                      noise: float | None = None) -> float:
    """FLOPs of one materialisation's M1 -> M2 contraction (its path cost), without building the operator.

    For ``--dry-run``, where the operator cannot be built (its start is not meta-safe); the
    vectors' and embeddings' maps are small beside it and not counted.
    """
    rank = start_rank(init, source.dims, target_dims) if rank is None else rank
    (b1, b2), s, t = _blocks(source, target_dims), source.dims, target_dims
    cores = [(rank, n1, n2, rank) for n1, n2 in ((b1, b2), (s.hidden, t.hidden), (s.hidden, t.hidden), (s.layers, t.layers))]
    return float(ring_path((b1, s.hidden, s.hidden, s.layers), cores).opt_cost)


# --- the start ----------------------------------------------------------------
@dataclass
class Start:
    """The start's Kronecker terms (S_B, S_I, S_O, S_L matrices each) and its unit copy map."""

    terms: list[tuple[Tensor, Tensor, Tensor, Tensor]]
    copy_map: WidthMap | None


def _select_matrix(index: Tensor, n_old: int) -> Tensor:
    """The 0/1 matrix (n_old x n_new) with a one at (index[j], j)."""
    return (torch.arange(n_old)[:, None] == index[None, :]).double()


def _head_selection(src: Dims, tgt: Dims, strategy: str, gen: torch.Generator) -> WidthMap:
    for label, d in (("source", src), ("target", tgt)):
        if d.heads * d.head_dim != d.hidden:
            raise GrowError(
                f"Mango's start copies whole heads inside D-wide tiles, which needs heads x head_dim = hidden; "
                f"the {label} has {d.heads} x {d.head_dim} != {d.hidden}"
            )
    if tgt.heads // tgt.kv_heads < src.heads // src.kv_heads:
        raise GrowError("Mango cannot start from a target with smaller query groups (heads per kv head) than the source")
    at_src_depth = Dims(tgt.hidden, tgt.ffn, tgt.heads, tgt.kv_heads, tgt.head_dim, src.layers)
    return WidthMap.build(src, at_src_depth, strategy, gen)


def _tile_map(src: Packing, tgt: Packing) -> Tensor:
    """S_B of a start (B1 x B2): target tile (r, c) copies (r mod rows1, c mod cols1); .in tiles split."""
    out = torch.zeros(src.blocks, tgt.blocks, dtype=torch.float64)
    for name in src.matrices:
        (a1, b1), (a2, b2) = src.grid[name], tgt.grid[name]
        r2, c2 = torch.arange(a2)[:, None], torch.arange(b2)[None, :]
        copies = torch.bincount(torch.arange(a2) % a1, minlength=a1).double()
        rows = src.offset[name] + (r2 % a1) * b1 + c2 % b1
        cols = tgt.offset[name] + r2 * b2 + c2
        out[rows.reshape(-1), cols.reshape(-1)] = (1 / copies[r2 % a1]).expand(a2, b2).reshape(-1)
    return out


def _cancelling_noise(index: Tensor, n_old: int, scale: float, gen: torch.Generator) -> Tensor:
    """n_old x n_new noise whose columns sum to zero over each group of copies of a unit."""
    noise = torch.randn(n_old, len(index), generator=gen, dtype=torch.float64) * scale
    sums = torch.zeros(n_old, n_old, dtype=torch.float64).index_add_(1, index, noise)
    counts = torch.bincount(index, minlength=n_old).double()
    return noise - sums[:, index] / counts[index]


def build_start(src: Packing, tgt: Packing, init: str, noise: float, gen: torch.Generator) -> Start:
    """The Kronecker terms of the fixed method ``init`` (a width and a depth operator)."""
    method = fixed_methods()[init]
    wmap = _head_selection(src.dims, tgt.dims, method.width_operator.strategy, gen)
    sigma = wmap.axes["Q"].index  # source unit of each target unit inside a D-wide tile
    d1 = src.dims.hidden
    counts = torch.bincount(sigma, minlength=d1).double()
    copy = _select_matrix(sigma, d1)
    split = copy / counts[:, None]
    # width terms: (S_I, S_O, source-layer shift)
    width = [(split, copy, 0)]
    if method.width_operator.knowledge_from_next_layer:
        first = torch.full((d1,), len(sigma)).scatter_reduce(0, sigma, torch.arange(len(sigma)), "amin")
        new = torch.arange(len(sigma)) != first[sigma]
        if new.any():
            width = [(split, copy * ~new, 0), (split, copy * new, 1)]
    # depth terms: (S_B, which target layers keep their residual outputs)
    dmap = method.depth_operator.layer_map(src.dims.layers, tgt.dims.layers)
    tiles = _tile_map(src, tgt)
    depth = [(tiles, None)]
    if any(dmap.silenced):
        residual = torch.zeros(tgt.blocks, dtype=torch.bool)
        for name in tgt.matrices:
            residual[tgt.tiles(name)] = name in RESIDUAL_OUTPUTS
        keep = ~torch.tensor(dmap.silenced)
        depth = [(tiles * ~residual, None), (tiles * residual, keep)]
    layers1, source_layer = src.dims.layers, torch.tensor(dmap.source)
    terms = []
    for s_b, keep in depth:
        for s_i, s_o, shift in width:
            s_l = _select_matrix(torch.clamp(source_layer + shift, max=layers1 - 1), layers1)
            s_l = s_l if keep is None else s_l * keep
            if noise:
                s_i = s_i + _cancelling_noise(sigma, d1, noise / math.sqrt(d1), gen)
            terms.append((s_b, s_i, s_o, s_l))
    return Start(terms, _copy_map(wmap, sigma, src, tgt))


def _copy_map(wmap: WidthMap, sigma: Tensor, src: Packing, tgt: Packing) -> WidthMap | None:
    """The start's unit-level copy map, or None where padding makes it no copy map."""
    (d1, f1), (d2, f2) = (src.dims.hidden, src.dims.ffn), (tgt.dims.hidden, tgt.dims.ffn)
    n1, n2 = src.layouts["F"].tiles, tgt.layouts["F"].tiles
    if f1 % d1 or f2 % d2 or n2 < n1:
        return None
    f = torch.arange(f2)
    f_index = sigma[f // n2] * n1 + (f % n2) % n1
    return WidthMap(
        {
            "D": AxisMap.from_index(sigma, d1),
            "Q": wmap.axes["Q"],
            "K": wmap.axes["K"],
            "F": AxisMap.from_index(f_index, f1),
        }
    )


def ring_cores(start: Start, rank: int, sizes: dict[str, tuple[int, int]], gen: torch.Generator) -> list[Tensor]:
    """S_B, S_I, S_O, S_L (float64): the start's terms on the ring diagonal, the rest as the module docstring says.

    ``sizes`` holds the (source, target) sizes of the blocks ``"B"``, hidden ``"D"`` and layers ``"L"``.
    """
    used, extra = torch.arange(len(start.terms)), torch.arange(len(start.terms), rank)
    upper = torch.ones(rank, rank, dtype=torch.float64).triu(1)[:, None, None, :]

    def core(k: int, n1: int, n2: int, off_diagonal: bool) -> Tensor:
        out = torch.zeros(rank, n1, n2, rank, dtype=torch.float64)
        out[used, :, :, used] = torch.stack([term[k] for term in start.terms]).double()
        if k == 0:  # S_B: zero off the start's terms, so every other path through the ring is zero
            return out
        scale = 1 / math.sqrt(n1)  # a random map of about unit gain
        out[extra, :, :, extra] = torch.randn(len(extra), n1, n2, generator=gen, dtype=torch.float64) * scale
        if off_diagonal:
            out = out + torch.randn(rank, n1, n2, rank, generator=gen, dtype=torch.float64) * scale * upper
        return out

    (b1, b2), (d1, d2), (l1, l2) = sizes["B"], sizes["D"], sizes["L"]
    return [core(0, b1, b2, False), core(1, d1, d2, True), core(2, d1, d2, True), core(3, l1, l2, False)]


# --- the operator ---------------------------------------------------------------
class MangoOperator(GrowthOperator):
    """Target weights = the tensor-ring map of the packed source; only the four cores are fit.

    ``max_elements`` bounds one intermediate of the contraction; above it the map
    is chunked (see :mod:`~growkit.ops.mango_contract`) and runs in the operator's
    ``workspace``, kept between calls so that the fit's steps reuse its memory.
    """

    def __init__(
        self,
        source: Canonical,
        target_dims: Dims,
        rank: int | None = None,
        init: str = DEFAULT_INIT,
        noise: float | None = None,
        seed: int = 0,
        max_elements: int = MAX_ELEMENTS,
    ):
        super().__init__(source, target_dims)
        source.dims.check_growth_to(target_dims)
        _check_init(init, rank)
        method = fixed_methods()[init]
        noise = method.width_operator.noise if noise is None else float(noise)
        self.init, self.max_elements = init, max_elements
        self.workspace = Workspace()
        self.placements = _placements(source)
        self.src, self.tgt = Packing(self.placements, source.dims), Packing(self.placements, target_dims)
        gen = torch.Generator().manual_seed(seed)
        start = build_start(self.src, self.tgt, init, noise, gen)
        rank = start_rank(init, source.dims, target_dims) if rank is None else rank
        self.rank = rank
        if len(start.terms) > rank:
            raise GrowError(
                f"Mango init={init!r} is a sum of {len(start.terms)} Kronecker terms at these sizes and needs "
                f"rank >= {len(start.terms)}; got rank={rank}"
            )
        self.copy_map = start.copy_map
        _warn_inexact(source, self.src, self.tgt, method)
        sizes = {
            "B": (self.src.blocks, self.tgt.blocks),
            "D": (source.dims.hidden, target_dims.hidden),
            "L": (source.dims.layers, target_dims.layers),
        }
        dtype = next(iter(source.tensors.values())).dtype
        s_b, s_i, s_o, s_l = (core.to(dtype) for core in ring_cores(start, rank, sizes, gen))
        self.s_b, self.s_i, self.s_o, self.s_l = (nn.Parameter(core) for core in (s_b, s_i, s_o, s_l))
        tensors = {n: t.detach() for n, t in source.tensors.items()}
        m1 = [self.placements[n].pack(tensors[n], self.src.layouts) for n in self.src.matrices]
        m1 = source_layout(torch.cat(m1), [tuple(c.shape) for c in self.cores()], max_elements)
        self.register_buffer("m1", m1, persistent=False)
        self._others = [n for n, p in self.placements.items() if p.grown and not p.is_matrix]
        self._homes = {n: _home(n, self.placements[n], self.src, self.tgt) for n in self._others}
        for i, name in enumerate(self._others):
            packed = self.placements[name].pack(tensors[name], self.src.layouts)
            packed = source_layout(packed, [tuple(c.shape) for c in self._collapsed_cores(name)], max_elements)
            self.register_buffer(f"packed_{i}", packed, persistent=False)

    def cores(self) -> list[Tensor]:
        return [self.s_b, self.s_i, self.s_o, self.s_l]

    def contractions(self) -> list[tuple[Tensor, list[Tensor]]]:
        """Every ring map :meth:`forward` computes, as (packed input, cores): M1 first, then the other tensors."""
        others = [(getattr(self, f"packed_{i}"), self._collapsed_cores(name)) for i, name in enumerate(self._others)]
        return [(self.m1, self.cores())] + others

    def forward(self) -> dict[str, Tensor]:
        sizes = [self.tgt.grid[n][0] * self.tgt.grid[n][1] for n in self.tgt.matrices]
        pieces = ring_map_split(self.m1, self.cores(), sizes, max_elements=self.max_elements, workspace=self.workspace)
        others = [ring_map(x, cores, self.max_elements, self.workspace) for x, cores in self.contractions()[1:]]
        out = {name: self.placements[name].unpack(piece, self.tgt.layouts) for name, piece in zip(self.tgt.matrices, pieces)}
        out.update({name: self.placements[name].unpack(y, self.tgt.layouts) for name, y in zip(self._others, others)})
        return {name: out[name] if name in out else self.source_tensor(name) for name in self._source_names}

    def _collapsed_cores(self, name: str) -> list[Tensor]:
        """The ring for a non-matrix tensor: S_B at its home tiles, absent axes' cores collapsed."""
        p, home = self.placements[name], self._homes[name]
        (a1, b1), (a2, b2) = self.src.grid[home], self.tgt.grid[home]
        block = self.s_b[:, self.src.tiles(home), self.tgt.tiles(home)].unflatten(2, (a2, b2)).unflatten(1, (a1, b1))
        lay1, lay2 = p.layouts(self.src.layouts), p.layouts(self.tgt.layouts)
        if p.in_axis:
            block = block[:, : lay1[0].tiles, :, : lay2[0].tiles]
        else:
            block = block[:, :1].sum(3, keepdim=True)
        if p.out_axis:
            block = block[:, :, : lay1[1].tiles, :, : lay2[1].tiles]
        else:
            block = block[:, :, :, :, :1].sum(2, keepdim=True)
        s_i = self.s_i if p.in_axis else self.s_i[:, :1].sum(2, keepdim=True)
        s_o = self.s_o if p.out_axis else self.s_o[:, :, :1].sum(1, keepdim=True)
        s_l = self.s_l if p.layered else self.s_l[:, :, :1].sum(1, keepdim=True)
        return [block.flatten(3, 4).flatten(1, 2), s_i, s_o, s_l]


def _check_init(init: str, rank: int | None) -> None:
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise GrowError(f"Mango's rank must be a positive integer, got {rank!r}")
    if init in UNREACHABLE:
        raise GrowError(f"Mango cannot start from {init!r}: {UNREACHABLE[init]}")
    fixed = fixed_methods()
    if init not in fixed:
        raise GrowError(
            f"unknown Mango init {init!r}; choose a fixed method: {', '.join(fixed)} "
            "(stackbert and interpolate need rank >= 1, the others rank >= 2)"
        )


def _warn_inexact(source: Canonical, src: Packing, tgt: Packing, method: Method) -> None:
    (d1, f1), (d2, f2) = (src.dims.hidden, src.dims.ffn), (tgt.dims.hidden, tgt.dims.ffn)
    if f1 % d1 or f2 % d2 or tgt.layouts["F"].tiles < src.layouts["F"].tiles:
        warnings.warn(
            f"Mango packs the FFN (F={f1} -> {f2}) in {d1} -> {d2}-wide tiles with padding or dropped tiles, "
            "so its start is only close to the fixed method; F multiple of D avoids this",
            stacklevel=3,
        )
    inserted = any(method.depth_operator.layer_map(src.dims.layers, tgt.dims.layers).silenced)
    if inserted and is_post_norm(source):
        warnings.warn(
            f"{source.family} is post-norm: inserted layers keep their LayerNorms, so the identity-insertion "
            "start preserves the function only where those norms are the identity",
            stacklevel=3,
        )


def build(
    source: Canonical,
    target_dims: Dims,
    *,
    seed: int = 0,
    rank: int | None = None,
    init: str = DEFAULT_INIT,
    noise: float | None = None,
) -> MangoOperator:
    """A Mango operator of ``rank`` starting at the fixed method ``init``.

    ``rank=None`` takes the smallest rank that holds the start (its number of Kronecker
    terms: 1 for stackbert and interpolate, 2 for net2net, bert2bert and exact when
    layers or units are added), so ``init=`` alone picks any start.

    ``noise`` is the start's cancelling symmetry-breaking noise (default: the fixed
    method's own, 0.01 or 0 for AKI); ``noise=0`` makes the start equal the fixed method.
    """
    return MangoOperator(source, target_dims, rank=rank, init=init, noise=noise, seed=seed)


#: the registry entry (registered by :mod:`growkit.ops`)
MANGO = Method(**vars(CATALOG["mango"]), builder=build, parameter_count=parameter_count,
               materialize_flops=materialize_flops)
