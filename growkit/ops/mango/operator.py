"""The Mango operator, its registry entry and its cost hooks (see :mod:`growkit.ops.mango`).

The recipe's defaults are the module-level constants at the top (``DEFAULT_INIT``, ``DEFAULT_SPLIT``, ``DEFAULT_MIX``);
its fit defaults (no fit: the start is materialised as is; lr 1e-4 when a fit is asked for) are the
``fit_steps``/``fit_lr`` of its catalog entry, which ``grow``, the CLI and the bench all read.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ...core.canonical import Canonical, Dims
from ...core.catalog import CATALOG
from ...core.errors import GrowError
from ..depth import is_post_norm
from ..operator import GrowthOperator
from ..registry import Method, fixed_methods
from ..ring.chunks import Workspace
from ..ring.execute import MAX_ELEMENTS, ring_map, ring_map_split, source_layout
from ..ring.plan import ring_path
from .packing import Packing, _blocks, _home, _placements
from .start import SPLITS, build_start, ring_cores, start_rank

Tensor = torch.Tensor

# --- the recipe's defaults ------------------------------------------------------
#: the fixed method the operator starts from when no init= is given
DEFAULT_INIT = "net2net"
#: how the start shares a copied unit's outgoing weights (``keep``: the original keeps them, new copies start silent)
DEFAULT_SPLIT = "keep"
#: the random mixture added to the silent new units' inputs, in units of one unit's inputs (see ``start._mixing_term``)
DEFAULT_MIX = 2.0

#: the fixed methods a start can equal, and the learned ones it cannot, with why
UNREACHABLE = {
    "ligo": "LiGO's width matrices differ per layer and role, while Mango's width cores are shared by every tile",
    "mango": "a start is a fixed method",
}


def parameter_count(source: Canonical, target_dims: Dims, rank: int | None = None, init: str = DEFAULT_INIT,
                    noise: float | None = None, split: str = DEFAULT_SPLIT, mix: float | None = None) -> int:
    """The Mango operator's parameter count, R^2 (B1 B2 + 2 D1 D2 + L1 L2), without building it."""
    _, rank = _mix_and_rank(mix, init, split, noise, rank, source.dims, target_dims)
    (b1, b2), s, t = _blocks(source, target_dims), source.dims, target_dims
    return rank * rank * (b1 * b2 + 2 * s.hidden * t.hidden + s.layers * t.layers)


def materialize_flops(source: Canonical, target_dims: Dims, rank: int | None = None, init: str = DEFAULT_INIT,
                      noise: float | None = None, split: str = DEFAULT_SPLIT, mix: float | None = None) -> float:
    """FLOPs of one materialisation's M1 -> M2 contraction (its path cost), without building the operator.

    For ``--dry-run``, where the operator cannot be built (its start is not meta-safe); the
    vectors' and embeddings' maps are small beside it and not counted.
    """
    _, rank = _mix_and_rank(mix, init, split, noise, rank, source.dims, target_dims)
    (b1, b2), s, t = _blocks(source, target_dims), source.dims, target_dims
    cores = [(rank, n1, n2, rank) for n1, n2 in ((b1, b2), (s.hidden, t.hidden), (s.hidden, t.hidden), (s.layers, t.layers))]
    return float(ring_path((b1, s.hidden, s.hidden, s.layers), cores).opt_cost)


class MangoOperator(GrowthOperator):
    """Target weights = the tensor-ring map of the packed source; only the four cores are fit.

    ``max_elements`` bounds one intermediate of the contraction; above it the map
    is chunked (see :mod:`~growkit.ops.ring`) and runs in the operator's
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
        split: str = DEFAULT_SPLIT,
        mix: float | None = None,
    ):
        super().__init__(source, target_dims)
        source.dims.check_growth_to(target_dims)
        _check_init(init, rank)
        if split not in SPLITS:
            raise GrowError(f"Mango's split must be one of {', '.join(SPLITS)}, got {split!r}")
        mix, rank = _mix_and_rank(mix, init, split, noise, rank, source.dims, target_dims)
        _check_mix(mix, split, noise)
        method = fixed_methods()[init]
        noise = 0.0 if mix else method.width_operator.noise if noise is None else float(noise)
        self.init, self.max_elements = init, max_elements
        self.layer_source = method.depth_operator.layer_map(source.dims.layers, target_dims.layers).source
        self.workspace = Workspace()
        self.placements = _placements(source)
        self.src, self.tgt = Packing(self.placements, source.dims), Packing(self.placements, target_dims)
        gen = torch.Generator().manual_seed(seed)
        start = build_start(self.src, self.tgt, init, noise, gen, split, mix)
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


def _mix_and_rank(mix: float | None, init: str, split: str, noise: float | None, rank: int | None,
                  source: Dims, target: Dims) -> tuple[float, int]:
    """The mix and the rank the operator takes.

    ``mix`` as given, else ``DEFAULT_MIX`` where the start has silent units to mix (a keep split and a
    wider target), no noise is asked for and the rank leaves room for the mixing term (``rank=None``
    always does), else 0. ``rank`` as given, else the start's terms, the mixing term included.
    """
    terms = start_rank(init, source, target)
    if mix is None:
        silent = split == "keep" and target.hidden > source.hidden
        room = rank is None or rank > terms
        mix = DEFAULT_MIX if silent and noise is None and room else 0.0
    mix = float(mix)
    return mix, terms + (1 if mix else 0) if rank is None else rank


def _check_mix(mix: float, split: str, noise: float | None) -> None:
    """Mixed inputs keep the function only on silent new units, and they replace the cancelling noise."""
    if mix < 0:
        raise GrowError(f"Mango's mix must be 0 or more, got {mix!r}")
    if mix and split != "keep":
        raise GrowError("Mango's mix needs split='keep': new units read mixed inputs only while they start silent")
    if mix and noise:
        raise GrowError("Mango's mix replaces the cancelling noise (copies no longer see equal inputs); "
                        "leave noise unset or 0")


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
    split: str = DEFAULT_SPLIT,
    mix: float | None = None,
) -> MangoOperator:
    """A Mango operator of ``rank`` starting at the fixed method ``init``.

    ``rank=None`` takes the smallest rank that holds the start (its number of Kronecker
    terms: 1 for stackbert and interpolate, 2 for net2net, bert2bert and exact when
    layers or units are added), so ``init=`` alone picks any start.

    ``noise`` is the start's cancelling symmetry-breaking noise (default: the fixed
    method's own, 0.01 or 0 for AKI); ``noise=0`` makes the start equal the fixed method.
    ``split`` shares a copied unit's outgoing weights ``even`` (Net2Net) or ``keep``s them
    with the original (new copies start silent); both keep the function. ``mix`` > 0 adds
    to each new unit's key, value and FFN inputs a random mixture of its source units'
    inputs, about ``mix`` times one unit's (one more Kronecker term; needs ``split="keep"``
    and replaces the noise). Default: ``DEFAULT_MIX`` under a keep split when no noise is
    given and ``rank`` leaves room for the term, else 0.
    """
    return MangoOperator(source, target_dims, rank=rank, init=init, noise=noise, seed=seed, split=split, mix=mix)


#: the registry entry (registered by :mod:`growkit.ops`)
MANGO = Method(**vars(CATALOG["mango"]), builder=build, parameter_count=parameter_count,
               materialize_flops=materialize_flops)
