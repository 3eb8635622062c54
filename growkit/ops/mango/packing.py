"""Mango's packing: every per-layer matrix cut into D x D tiles and stacked into M[b, i, o, l] (see :mod:`growkit.ops.mango`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...core.canonical import GROWABLE, Canonical, Dims, parse_axis
from ...core.errors import GrowError
from ..depth import RESIDUAL_OUTPUTS

Tensor = torch.Tensor
#: packing order: residual-branch outputs last, so that q anchors the D-only tensors
ORDER = ("layer.q", "layer.k", "layer.v", "layer.mlp_gate", "layer.mlp_in", "layer.o", "layer.mlp_out")


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
