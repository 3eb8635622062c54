"""Mango's start: the Kronecker terms whose first materialisation equals a fixed method (see :mod:`growkit.ops.mango`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.canonical import Dims
from ...core.errors import GrowError
from ..depth import RESIDUAL_OUTPUTS
from ..registry import fixed_methods
from ..width import AxisMap, WidthMap
from .packing import Packing

Tensor = torch.Tensor
#: how a start shares a copied unit's outgoing weights between its copies (see :func:`_split_matrix`)
SPLITS = ("even", "keep")


@dataclass
class Start:
    """The start's Kronecker terms (S_B, S_I, S_O, S_L matrices each) and its unit copy map."""

    terms: list[tuple[Tensor, Tensor, Tensor, Tensor]]
    copy_map: WidthMap | None


def _select_matrix(index: Tensor, n_old: int) -> Tensor:
    """The 0/1 matrix (n_old x n_new) with a one at (index[j], j)."""
    return (torch.arange(n_old)[:, None] == index[None, :]).double()


def _head_selection(src: Dims, tgt: Dims, strategy: str, gen: torch.Generator) -> WidthMap:
    """The head-aligned copy map; random copies are drawn without replacement, so at whole factors every
    unit has as many copies as any other and the norms' statistics, and the function, stay exact."""
    for label, d in (("source", src), ("target", tgt)):
        if d.heads * d.head_dim != d.hidden:
            raise GrowError(
                f"Mango's start copies whole heads inside D-wide tiles, which needs heads x head_dim = hidden; "
                f"the {label} has {d.heads} x {d.head_dim} != {d.hidden}"
            )
    if tgt.heads // tgt.kv_heads < src.heads // src.kv_heads:
        raise GrowError("Mango cannot start from a target with smaller query groups (heads per kv head) than the source")
    at_src_depth = Dims(tgt.hidden, tgt.ffn, tgt.heads, tgt.kv_heads, tgt.head_dim, src.layers)
    return WidthMap.build(src, at_src_depth, "balanced" if strategy == "random" else strategy, gen)


def _tile_map(src: Packing, tgt: Packing, split: str) -> Tensor:
    """S_B of a start (B1 x B2): target tile (r, c) copies (r mod rows1, c mod cols1); .in tiles shared by ``split``."""
    out = torch.zeros(src.blocks, tgt.blocks, dtype=torch.float64)
    for name in src.matrices:
        (a1, b1), (a2, b2) = src.grid[name], tgt.grid[name]
        r2, c2 = torch.arange(a2)[:, None], torch.arange(b2)[None, :]
        rows = src.offset[name] + (r2 % a1) * b1 + c2 % b1
        cols = tgt.offset[name] + r2 * b2 + c2
        share = _split_matrix(torch.arange(a2) % a1, a1, split).sum(0)[:, None]  # each row tile's share of its source
        out[rows.reshape(-1), cols.reshape(-1)] = share.expand(a2, b2).reshape(-1)
    return out


def _cancelling_noise(index: Tensor, n_old: int, scale: float, gen: torch.Generator) -> Tensor:
    """n_old x n_new noise whose columns sum to zero over each group of copies of a unit."""
    noise = torch.randn(n_old, len(index), generator=gen, dtype=torch.float64) * scale
    sums = torch.zeros(n_old, n_old, dtype=torch.float64).index_add_(1, index, noise)
    counts = torch.bincount(index, minlength=n_old).double()
    return noise - sums[:, index] / counts[index]


def _split_matrix(sigma: Tensor, n_old: int, split: str) -> Tensor:
    """S_I's share of each copy in its source unit's outgoing weights (columns: target units).

    ``even``: 1/count each (Net2Net). ``keep``: the source unit's first copy keeps
    all of it and the later copies start silent. Both compute the same function,
    but even shares make the copies' gradients equal, while a silent copy's
    outgoing weights grow from the gradient alone, so its inputs then move
    differently from the original's.
    """
    copy = _select_matrix(sigma, n_old)
    if split == "even":
        return copy / torch.bincount(sigma, minlength=n_old).double()[:, None]
    return copy * _first_copies(sigma, n_old)


def _first_copies(sigma: Tensor, n_old: int) -> Tensor:
    """Which target units are the first copy of their source unit (the others are new units)."""
    first = torch.full((n_old,), len(sigma)).scatter_reduce(0, sigma, torch.arange(len(sigma)), "amin")
    return torch.arange(len(sigma)) == first[sigma]


def build_start(src: Packing, tgt: Packing, init: str, noise: float, gen: torch.Generator,
                split: str = "even", mix: float = 0.0) -> Start:
    """The Kronecker terms of the fixed method ``init`` (a width and a depth operator), plus :func:`_mixing_term`."""
    method = fixed_methods()[init]
    wmap = _head_selection(src.dims, tgt.dims, method.width_operator.strategy, gen)
    sigma = wmap.axes["Q"].index  # source unit of each target unit inside a D-wide tile
    d1 = src.dims.hidden
    copy = _select_matrix(sigma, d1)
    shares = _split_matrix(sigma, d1, split)
    # width terms: (S_I, S_O, source-layer shift)
    width = [(shares, copy, 0)]
    if method.width_operator.knowledge_from_next_layer:
        new = ~_first_copies(sigma, d1)
        if new.any():
            width = [(shares, copy * ~new, 0), (shares, copy * new, 1)]
    # depth terms: (S_B, which target layers keep their residual outputs)
    dmap = method.depth_operator.layer_map(src.dims.layers, tgt.dims.layers)
    tiles = _tile_map(src, tgt, split)
    depth = [(tiles, None)]
    if any(dmap.silenced):
        residual = _tile_mask(tgt, RESIDUAL_OUTPUTS)
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
    if mix:
        s_l = _select_matrix(source_layer, layers1)
        terms.append(_mixing_term(tgt, tiles, shares, sigma, s_l, mix, gen))
        return Start(terms, None)
    return Start(terms, _copy_map(wmap, sigma, src, tgt))


#: packed matrices whose new units may read anything: they neither write the residual stream nor place the
#: embeddings and norms (those read S_B at q's tiles, see :func:`~growkit.ops.mango.packing._home`)
MIXED = ("layer.k", "layer.v", "layer.mlp_gate", "layer.mlp_in")


def _mixing_term(tgt: Packing, tiles: Tensor, shares: Tensor, sigma: Tensor, s_l: Tensor, mix: float,
                 gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A term adding to each new unit's inputs a random mixture of its source units' inputs (keys, values, FFN).

    Under ``split="keep"`` new units start silent, so their inputs do not reach the
    output and the start keeps the function; the mixture makes each new unit compute
    a feature of its own from the first step, where a copy starts as a duplicate and
    only its zero-started outgoing weights set it apart. The mixing weights are
    N(0, mix^2 / D1): the mixture is about ``mix`` times as large as one unit's inputs.
    """
    d1, new = shares.shape[0], ~_first_copies(sigma, shares.shape[0])
    s_o = torch.randn(d1, len(sigma), generator=gen, dtype=torch.float64) * (mix / math.sqrt(d1)) * new
    return tiles * _tile_mask(tgt, MIXED), shares, s_o, s_l


def _tile_mask(tgt: Packing, names: tuple[str, ...]) -> Tensor:
    """Which of the target's packed tiles belong to the matrices ``names``."""
    mask = torch.zeros(tgt.blocks, dtype=torch.bool)
    for name in tgt.matrices:
        mask[tgt.tiles(name)] = name in names
    return mask


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


def start_rank(init: str, source: Dims, target: Dims) -> int:
    """The number of Kronecker terms of the fixed method ``init``'s start, without building it."""
    method = fixed_methods()[init]
    silenced = any(method.depth_operator.layer_map(source.layers, target.layers).silenced)
    borrows = method.width_operator.knowledge_from_next_layer and target.hidden > source.hidden
    return (2 if silenced else 1) * (2 if borrows else 1)
