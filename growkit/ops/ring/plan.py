"""Planning a tensor-ring contraction: the pairwise order (opt_einsum) and the memory layout of each step.

Pure bookkeeping on shapes, cached per shape; :mod:`.execute` and :mod:`.chunks`
run the plans made here.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import opt_einsum as oe


def ring_equation(n_lead: int, n_cores: int) -> str:
    """The einsum equation of a ring map with ``n_lead`` untouched leading axes.

    >>> ring_equation(0, 2)
    'cd,aceb,bdfa->ef'
    """
    sym = iter(oe.get_symbol(i) for i in range(n_lead + 4 * n_cores + 1))
    lead = "".join(next(sym) for _ in range(n_lead))
    bonds = [next(sym) for _ in range(n_cores)]
    src = [next(sym) for _ in range(n_cores)]
    tgt = [next(sym) for _ in range(n_cores)]
    cores = [bonds[k] + src[k] + tgt[k] + bonds[(k + 1) % n_cores] for k in range(n_cores)]
    return f"{lead}{''.join(src)},{','.join(cores)}->{lead}{''.join(tgt)}"


@lru_cache(maxsize=256)
def _expression(shapes: tuple[tuple[int, ...], ...]):
    x_shape, *core_shapes = shapes
    eq = ring_equation(len(x_shape) - len(core_shapes), len(core_shapes))
    return oe.contract_expression(eq, *shapes, optimize="optimal")


def ring_path(x_shape: tuple[int, ...], core_shapes: list[tuple[int, ...]]) -> oe.contract.PathInfo:
    """opt_einsum's path information (order, FLOP count, largest intermediate) for a ring map."""
    eq = ring_equation(len(x_shape) - len(core_shapes), len(core_shapes))
    return oe.contract_path(eq, x_shape, *core_shapes, shapes=True, optimize="optimal")[1]


@lru_cache(maxsize=256)
def _largest_intermediate(shapes: tuple[tuple[int, ...], ...]) -> int:
    return int(ring_path(shapes[0], list(shapes[1:])).largest_intermediate)


#: cost model of one CPU matmul step (relative figures; only the ranking of layouts matters)
_GEMM_FLOPS = 80e9  #: a large fp32 matmul, FLOP/s
_FULL_SPEED_DIM = 96  #: a matmul with a side shorter than this runs at sqrt(side / it) of full speed (MKL, 1 thread)
_BANDWIDTH = 8e9  #: streaming memory traffic, bytes/s; a permute copy runs at half of it
_PER_BATCH = 1e-5  #: overhead of one matrix in a batched step (its backward loops over them), s
_MAX_BATCHES = 4096  #: more matrices than this in a batched step: lay the summed axes last instead


@dataclass(frozen=True)
class Step:
    """One pairwise step of a chain: the intermediate ``z`` meets core ``core``.

    ``copy`` permutes ``z`` first (None: it is laid out already); then ``z`` is viewed as
    ``[pre, K, post]`` (``pre`` and ``k`` count axes) and ``core_perm`` orders the core's
    axes as (summed axes in ``z``'s order, new axes in the order they take in ``z``).
    ``flops`` is the step's cost at the planned sizes (what decides recomputation).
    """

    core: int
    copy: tuple[int, ...] | None
    pre: int
    k: int
    core_perm: tuple[int, ...]
    flops: float = 0.0


@dataclass(frozen=True)
class Plan:
    """A chain's layout: ``source_perm`` orders ``x``'s axes, ``out_perm`` restores the output's.

    The output is returned as a permuted view of the last step's result (no copy).
    """

    source_perm: tuple[int, ...]
    steps: tuple[Step, ...]
    out_perm: tuple[int, ...]
    cost: float

    @property
    def flops(self) -> float:
        return sum(step.flops for step in self.steps)


def _chain(path: list[tuple[int, ...]], n_cores: int) -> list[int] | None:
    """The cores in the order a path meets them, if it is a chain through the source; else None."""
    operands: list[object] = ["x", *range(n_cores)]
    order = []
    for pair in path:
        picked = [operands[i] for i in pair]
        for i in sorted(pair, reverse=True):
            del operands[i]
        chain = [p for p in picked if p == "chain" or p == "x"]
        cores = [p for p in picked if isinstance(p, int)]
        if len(chain) != 1 or len(cores) != 1:
            return None
        order.append(cores[0])
        operands.append("chain")
    return order


def _core_axes(k: int, n: int) -> tuple[str, str, str, str]:
    return (f"b{k}", f"s{k}", f"t{k}", f"b{(k + 1) % n}")


def _search(x_axes: tuple[str, ...], n_lead: int, order: list[int], size: dict[str, int]) -> Plan:
    """The cheapest layout for a chain, by exhaustive search (at most 4! x 6^4 candidates)."""
    n = len(order)
    best: list[Plan | None] = [None]

    def numel(axes) -> int:
        return math.prod(size[a] for a in axes)

    def walk(source_perm: tuple[int, ...], z: tuple[str, ...], i: int, steps: tuple[Step, ...], cost: float) -> None:
        if best[0] is not None and cost >= best[0].cost:
            return
        if i == n:
            target = tuple(a for a in x_axes[:n_lead]) + tuple(f"t{k}" for k in range(n))
            best[0] = Plan(source_perm, steps, tuple(z.index(a) for a in target), cost)
            return
        k = order[i]
        axes = _core_axes(k, n)
        summed = [a for a in axes if a in z]
        new = [a for a in axes if a not in z]
        pos = sorted(z.index(a) for a in summed)
        p, copy, step_cost, z_now = pos[0], None, 0.0, z
        adjacent = pos == list(range(p, p + len(pos)))
        if not adjacent or (p + len(pos) < len(z) and numel(z[:p]) > _MAX_BATCHES):
            # permute the summed axes last: one copy, then a plain matmul
            rest = [a for a in z if a not in summed]
            z_now = tuple(rest + [a for a in z if a in summed])
            copy, p = tuple(z.index(a) for a in z_now), len(rest)
            step_cost += 2 * 4 * numel(z) / (_BANDWIDTH / 2)
        pre, kk, post = z_now[:p], z_now[p:p + len(summed)], z_now[p + len(summed):]
        flops = 2 * numel(pre) * numel(kk) * numel(new) * numel(post)
        traffic = 4 * (numel(z_now) + numel(pre) * numel(new) * numel(post))
        rows, cols = (numel(new), numel(post)) if post else (numel(pre), numel(new))  # one product's output
        speed = _GEMM_FLOPS * min(1.0, math.sqrt(min(rows, cols, numel(kk)) / _FULL_SPEED_DIM))
        step_cost += max(flops / speed, traffic / _BANDWIDTH)
        if post:
            step_cost += numel(pre) * _PER_BATCH
        for new_order in itertools.permutations(new):
            core_perm = tuple(axes.index(a) for a in (*kk, *new_order))
            nz = pre + tuple(new_order) + post
            step = Step(k, copy, len(pre), len(kk), core_perm, float(flops))
            walk(source_perm, nz, i + 1, (*steps, step), cost + step_cost)

    lead = x_axes[:n_lead]
    for perm in itertools.permutations(range(n_lead, n_lead + n)):  # free for a source laid out once (source_layout)
        source_perm = tuple(range(n_lead)) + perm
        walk(source_perm, lead + tuple(x_axes[j] for j in perm), 0, (), 0.0)
    assert best[0] is not None
    return best[0]


@lru_cache(maxsize=256)
def ring_plan(shapes: tuple[tuple[int, ...], ...]) -> Plan | None:
    """The layout plan of a ring map for these shapes, or None when opt_einsum's order is not a chain."""
    order = _chain(ring_path(shapes[0], list(shapes[1:])).path, len(shapes) - 1)
    return None if order is None else chain_plan(shapes, tuple(order))


def chain_plan(shapes: tuple[tuple[int, ...], ...], order: tuple[int, ...]) -> Plan:
    """The layout plan for contracting the cores in ``order`` (also used to time the naive order)."""
    x_shape, *core_shapes = shapes
    n = len(core_shapes)
    n_lead = len(x_shape) - n
    size = {f"l{j}": x_shape[j] for j in range(n_lead)}
    for k, shape in enumerate(core_shapes):
        size.update(dict(zip(_core_axes(k, n), shape)))
    x_axes = tuple(f"l{j}" for j in range(n_lead)) + tuple(f"s{k}" for k in range(n))
    return _search(x_axes, n_lead, list(order), size)
