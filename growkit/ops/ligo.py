"""LiGO: the learned linear growth operator (Wang et al., ICLR 2023, arXiv 2303.00980).

Each target tensor is a linear function of the source tensors of its role: width
first, per source layer, then depth (the paper's order; the official code does
depth first, but width first runs the per-layer width maps on the L1 source
layers instead of the L2 target layers, and the depth mix is one contraction)::

    wide[l1] = W1[l1] mapped on every grown axis by its group's matrix
    W2[l2]   = sum_l1 w[l2, l1] * wide[l1]

Width. Every tied group has one matrix B = [I; C]: the old units are kept exactly
and only C, (new - old) x old, is learned. A ``.out`` axis is mapped by B
(new = B @ old). An ``.in`` axis is mapped by diag(1/c) B with the same B, where c
is each target unit's copy count in the start's selection, frozen (all ones for
the "rand" start). At a selection start these are exactly the fixed operators'
copy and split maps (see canonical.py), and at the "rand" start the in/out pair
is the paper's B W B^T. Tying follows the official code: one B for the hidden
size D (embeddings, every residual-stream input and output, norms and heads);
per source layer one B each for q, k and v, with V's also mapping O's input; and
one per layer for the FFN. Q/K/V matrices act on units (heads x head_dim) in full,
so whole-head copying is one of their values; under GQA K's and V's act on kv
units, and O's input, which is indexed by query heads there, takes Q's B.

Depth. One coefficient row per role per target layer (w is L2 x L1). Weights and
biases are separate roles, so they get separate rows, as in the official code.

Starts (``init=``):

- ``"stackbert_noisy"`` (default): width "rand" (rows of C uniform, normalised
  to sum 1) and depth stacking plus U(0, noise) per coefficient, noise 0.03,
  each row renormalised to sum 1 (the official starts).
- a fixed method (stackbert, interpolate, net2net, bert2bert, exact): the first
  materialisation equals ``grow_fixed`` with the same seed bit for bit. C is that
  method's selection (same generator, :func:`width_start`), c its copy counts,
  w its layer copies with zero rows where identity insertion silences a residual
  output. Its cancelling noise is random, so no linear map of the source: it is
  kept as a frozen offset added to the widened tensors. bert2BERT's AKI is a
  second Kronecker term with the same maps: the new output units of layer l read
  layer l+1's source weights through layer l's maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.canonical import GROWABLE, Canonical, Dims, parse_axis
from ..core.errors import GrowError
from ..core.catalog import CATALOG
from .depth import RESIDUAL_OUTPUTS
from .operator import GrowthOperator
from .registry import Method, fixed_methods
from .width import AxisMap

Tensor = torch.Tensor
DEFAULT_INIT = "stackbert_noisy"
DEPTH_NOISE = 0.03  # the official init_noise
#: the canonical axis each width group acts on; D is global, the others per source layer
GROUP_AXIS = {"D": "D", "F": "F", "q": "Q", "k": "K", "v": "K"}
#: a tensor's grown axes: (dim, width group, side) each, in spec order
Plan = list[tuple[int, str, str]]


@dataclass
class Start:
    """Where the fit starts: C per group, frozen copy counts, depth rows per role, offsets."""

    width: dict[str, Tensor]
    counts: dict[str, Tensor]
    depth: dict[str, Tensor]
    offsets: dict[str, Tensor] = field(default_factory=dict)
    next_layer: bool = False
    #: the source layer each target layer copies at the start (None: stacked, layer l from l mod L1)
    layer_source: tuple[int, ...] | None = None


def width_group(name: str, axis: str, mha: bool) -> str:
    """The tied width group of ``axis`` in tensor ``name`` (see the module docstring)."""
    if axis in ("D", "F"):
        return axis
    role = name.removeprefix("layer.").removesuffix("_bias")
    if not name.startswith("layer.") or role not in ("q", "k", "v", "o"):
        raise GrowError(f"LiGO has no width tying for axis {axis} of {name!r}")
    if role == "o":
        return "v" if mha else "q"
    return role


def _plans(source: Canonical, target: Dims) -> dict[str, Plan]:
    mha = source.dims.heads == source.dims.kv_heads and target.heads == target.kv_heads
    plans = {}
    for name, spec in source.specs.items():
        plans[name] = []
        for dim, token in enumerate(spec):
            axis, side = parse_axis(token)
            if axis in GROWABLE and target.axis(axis) > source.dims.axis(axis):
                plans[name].append((dim, width_group(name, axis, mha), side))
    return plans


def _groups(source: Canonical, target: Dims, plans: dict[str, Plan]) -> dict[str, tuple[int, int, int | None]]:
    """(old units, new units, layers or None) of every group some tensor uses, in first-use order."""
    used = dict.fromkeys(group for plan in plans.values() for _, group, _ in plan)  # a set would make seeds vary
    layers = source.dims.layers
    return {
        g: (source.dims.axis(GROUP_AXIS[g]), target.axis(GROUP_AXIS[g]), None if g == "D" else layers)
        for g in used
    }


def _leading(layers: int | None) -> tuple[int, ...]:
    return () if layers is None else (layers,)


def rand_start(source: Canonical, target: Dims, plans: dict[str, Plan], seed: int, noise: float | None) -> Start:
    """The official start: width "rand", depth "stackbert_noisy"."""
    gen = torch.Generator().manual_seed(seed)
    width, counts = {}, {}
    for g, (n1, n2, layers) in _groups(source, target, plans).items():
        c = torch.rand(_leading(layers) + (n2 - n1, n1), generator=gen)
        width[g] = c / c.sum(-1, keepdim=True)
        counts[g] = torch.ones(n2)
    l1, l2 = source.dims.layers, target.layers
    noise = DEPTH_NOISE if noise is None else noise
    depth = {}
    for name in source.layer_names():
        w = torch.rand((l2, l1), generator=gen) * noise
        w[torch.arange(l2), torch.arange(l2) % l1] = 1.0
        depth[name] = w / w.sum(-1, keepdim=True)
    return Start(width, counts, depth)


def _selection(amap: AxisMap, layers: int | None) -> Tensor:
    """C for a copy map: each new unit's row is one-hot at the unit it copies."""
    n1 = amap.n_old
    if not torch.equal(amap.index[:n1], torch.arange(n1)):
        raise GrowError("LiGO can only start from a copy map that keeps the old units in place")
    c = torch.nn.functional.one_hot(amap.index[n1:], n1).float()
    return c.expand(_leading(layers) + c.shape).clone()


def fixed_start(
    source: Canonical, target: Dims, plans: dict[str, Plan], method: Method, seed: int, noise: float | None
) -> Start:
    """The start whose first materialisation is ``grow_fixed(source, target, method...)``."""
    widen = method.width_operator
    wmap, noises = widen.start(source, target, noise=noise, seed=seed)
    width, counts = {}, {}
    for g, (_, _, layers) in _groups(source, target, plans).items():
        amap = wmap.axes[GROUP_AXIS[g]]
        width[g] = _selection(amap, layers)
        counts[g] = amap.count.float()
    dmap = method.depth_operator.layer_map(source.dims.layers, target.layers)
    copies = torch.nn.functional.one_hot(torch.tensor(dmap.source), source.dims.layers).float()
    keep = torch.tensor([not s for s in dmap.silenced], dtype=torch.float32)[:, None]
    depth = {name: copies * keep if name in RESIDUAL_OUTPUTS else copies.clone() for name in source.layer_names()}
    offsets = {name: t for name, t in noises.items() if t.any()}
    return Start(width, counts, depth, offsets, next_layer=widen.knowledge_from_next_layer, layer_source=dmap.source)


def _depth_key(name: str) -> str:
    return name.removeprefix("layer.")


class LiGO(GrowthOperator):
    """Learned width matrices (tied groups) and depth coefficients; see the module docstring."""

    def __init__(self, source: Canonical, target_dims: Dims, start: Start, plans: dict[str, Plan]):
        super().__init__(source, target_dims)
        self.plans = plans
        self.width = nn.ParameterDict({g: nn.Parameter(c) for g, c in start.width.items()})
        self.depth = nn.ParameterDict({_depth_key(n): nn.Parameter(w) for n, w in start.depth.items()})
        for g, count in start.counts.items():
            self.register_buffer(f"count_{g}", count, persistent=False)
        self.offsets = {name: f"offset_{i}" for i, name in enumerate(start.offsets)}
        for name, buffer in self.offsets.items():
            self.register_buffer(buffer, start.offsets[name], persistent=False)
        self.next_layer = start.next_layer
        self.layer_source = start.layer_source
        layers = source.dims.layers
        self.register_buffer("next_index", torch.clamp(torch.arange(layers) + 1, max=layers - 1), persistent=False)

    def forward(self) -> dict[str, Tensor]:
        out = {}
        for name in self._source_names:
            t = self.source_tensor(name)
            layered = self.source_meta.specs[name][0] == "L"
            if self.plans[name]:
                knowledge = t.index_select(0, self.next_index) if self.next_layer and layered else None
                t = self._widen(t, self.plans[name], knowledge)
            if name in self.offsets:
                t = t + getattr(self, self.offsets[name])
            if layered:
                t = torch.einsum("ml,l...->m...", self.depth[_depth_key(name)], t)
            out[name] = t
        return out

    def _widen(self, t: Tensor, plan: Plan, knowledge: Tensor | None) -> Tensor:
        """Map every grown axis; ``knowledge`` (AKI) is where new output units read from."""
        for dim, group, side in plan:
            c = self.width[group]
            if side == "in":
                t = self._split(torch.cat([t, _new_units(t, dim, c)], dim), dim, group)
                if knowledge is not None:
                    knowledge = self._split(torch.cat([knowledge, _new_units(knowledge, dim, c)], dim), dim, group)
            else:
                new = _new_units(t if knowledge is None else knowledge, dim, c)
                t = torch.cat([t, new], dim)
                if knowledge is not None:
                    knowledge = torch.cat([knowledge, new], dim)
        return t

    def _split(self, t: Tensor, dim: int, group: str) -> Tensor:
        shape = [1] * t.dim()
        shape[dim] = -1
        return t / getattr(self, f"count_{group}").view(shape)


def _new_units(t: Tensor, dim: int, c: Tensor) -> Tensor:
    """C applied along ``dim`` of ``t``: ``c`` is (new, old), or (layers, new, old) matched to ``t``'s axis 0."""
    axes = "abcdefgh"[: t.dim()]
    out = axes[:dim] + "z" + axes[dim + 1 :]
    c_axes = ("" if c.dim() == 2 else axes[0]) + "z" + axes[dim]
    return torch.einsum(f"{axes},{c_axes}->{out}", t, c)


def build(
    source: Canonical, target_dims: Dims, *, seed: int = 0, init: str = DEFAULT_INIT, noise: float | None = None
) -> LiGO:
    """A LiGO operator from ``source`` to ``target_dims`` at the ``init`` start.

    ``noise`` is the start's symmetry-breaking noise: the fixed method's for a
    fixed start (as ``grow_fixed``'s option), the depth noise bound for stackbert_noisy.
    """
    source.dims.check_growth_to(target_dims)
    fixed = fixed_methods()
    plans = _plans(source, target_dims)
    if init == DEFAULT_INIT:
        start = rand_start(source, target_dims, plans, seed, noise)
    elif init in fixed:
        start = fixed_start(source, target_dims, plans, fixed[init], seed, noise)
    else:
        raise GrowError(f"unknown LiGO init {init!r}; choose {DEFAULT_INIT} or a fixed method: {', '.join(fixed)}")
    return LiGO(source, target_dims, start, plans)


#: the registry entry (registered by :mod:`growkit.ops`)
LIGO = Method(**vars(CATALOG["ligo"]), builder=build)
