"""The tensor-ring map behind Mango, contracted without ever building the full map.

A ring of cores ``C_k`` of shape ``(R, n_k, m_k, R)`` maps a tensor
``X[..., a_1, ..., a_K]`` (its last K axes have the cores' source sizes) to::

    Y[..., b_1, ..., b_K] = sum_a X[..., a_1, ..., a_K] Tr(C_1[:, a_1, b_1, :] ... C_K[:, a_K, b_K, :])

Written out, that map has ``prod(n_k m_k)`` entries (about 4.5e14 for DeiT-S -> B),
so it is only ever applied as a contraction. The order of the pairwise steps
decides the cost: opt_einsum's exhaustive search picks the one with the fewest
FLOPs (cached per shape). For the Mango shapes at R > 1 it contracts the source
with one width core (no ring bond summed), then the block and layer cores (which
close the bonds on their side), and the other width core last. The naive order,
one core after the other around the ring, sums a width axis and a ring bond
while two bonds are still open, which costs about a factor R more.

Execution. opt_einsum fixes the order; how each pairwise step is laid out in
memory decides the speed. Handing the steps to ``torch.einsum`` permutes the
large intermediates before and after every matmul, and the steps that only sum
a small core's axes (K = B1 R or L1 R) then cost more than the large ones. So
when the order is a chain (the source meets one core at a time, as it is for
every Mango shape), :func:`ring_plan` searches the memory layout: the order of
the source's axes and of the axes each step creates, so that every step's
summed axes lie next to each other in the intermediate. Each step is then one
matmul on views, ``[pre, K] @ W`` or a batched ``W^T @ [pre][K, post]`` (bmm), with
no copy of the large intermediate; a step that cannot be arranged that way
pays one permute. The layout is chosen by a small cost model (matmul time,
slower for a matmul with a short side, memory traffic, per-batch overhead) over
all candidates, cached per shape. The short side matters: a batch of
``[1024, 12288] @ [12288, 24]`` products ran at a third of a matmul's speed, where
one permute and a single tall matmul ran at 90%.

Memory: every intermediate of that order holds about ``R^2 |Y| / 2`` numbers and
autograd would keep each for the backward pass. Three things keep fewer:

- the steps that only sum a small core (under ``RECOMPUTE`` of the FLOPs) and
  lead to an expensive step are checkpointed, so their outputs are recomputed
  in the backward pass (about 1% more FLOPs) instead of stored;
- a fixed source laid out once in the order the plan reads it
  (:func:`source_layout`) is read as a view, not copied and kept;
- :func:`ring_map_split` hands the output over in pieces along the target axis
  of the core met first (Mango's S_B at R = 1), so neither the output nor its
  gradient is ever assembled whole.

When the largest intermediate exceeds ``max_elements``, the map is computed in
chunks (of at most ``CHUNK_ELEMENTS`` per intermediate) of the core whose target
axis is longest (slicing a core's target axis slices the output and leaves the
rest of the problem intact, so no work is repeated). The chunks run in one reused
workspace with a hand-written backward that recomputes each chunk's forward
(:mod:`growkit.ops.mango_chunks`); a chunked map whose order is not a chain, or
whose source needs a gradient, checkpoints each chunk through autograd instead.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from functools import lru_cache

import opt_einsum as oe
import torch
from torch.utils.checkpoint import checkpoint

from .mango_chunks import Chunk, Workspace, chunked_ring_map
from .mango_plan import Plan, Step

Tensor = torch.Tensor

#: above this many elements in one intermediate, the map is chunked (4 GiB of fp32)
MAX_ELEMENTS = 2**30
#: a chunk's largest intermediate holds at most this many elements (1 GiB of fp32): its
#: workspace (one buffer of this size per step) then stays small, and smaller chunks cost no speed
CHUNK_ELEMENTS = 2**28
#: a step under this share of a map's FLOPs is cheap: its output is recomputed, not stored, for the backward pass
RECOMPUTE = 0.05
#: intermediates under this many elements are not worth the extra calls of recomputing or splitting
SMALL = 2**22


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


# --- layout planning ------------------------------------------------------------------
#: cost model of one CPU matmul step (relative figures; only the ranking of layouts matters)
_GEMM_FLOPS = 80e9  #: a large fp32 matmul, FLOP/s
_FULL_SPEED_DIM = 96  #: a matmul with a side shorter than this runs at sqrt(side / it) of full speed (MKL, 1 thread)
_BANDWIDTH = 8e9  #: streaming memory traffic, bytes/s; a permute copy runs at half of it
_PER_BATCH = 1e-5  #: overhead of one matrix in a batched step (its backward loops over them), s
_MAX_BATCHES = 4096  #: more matrices than this in a batched step: lay the summed axes last instead


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


class _SharedBmm(torch.autograd.Function):
    """``y[b] = a @ z[b]`` with one ``a`` for every batch, as one matmul per batch.

    torch.matmul's 2-D @ 3-D path transpose-copies ``z``; MKL's bmm runs the thin
    steps (a 48 x 48 ``a``) at a quarter of the speed of separate matmuls; and autograd
    through a bmm on an expanded ``a`` builds one weight gradient per batch before
    summing them (as large as ``y`` for the first step). The loops avoid all three.
    """

    @staticmethod
    def forward(ctx, a: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(a, z)
        y = z.new_empty(z.shape[0], a.shape[0], z.shape[2])
        for zb, yb in zip(z, y):
            torch.mm(a, zb, out=yb)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, z = ctx.saved_tensors
        grad_a = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.zeros_like(a)
            for g, zb in zip(grad, z):
                grad_a.addmm_(g, zb.t())
        if ctx.needs_input_grad[1]:
            grad_z = torch.empty_like(z)
            for g, gz in zip(grad, grad_z):
                torch.mm(a.t(), g, out=gz)
        return grad_a, grad_z


def run_plan(plan: Plan, x: Tensor, cores: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    """Contract ``x`` with the ring of ``cores`` step by step as ``plan`` lays it out."""
    return _run_steps(x.permute(plan.source_perm), plan.steps, cores, plan.flops).permute(plan.out_perm)


def _segments(steps: tuple[Step, ...], total: float) -> list[tuple[Step, ...]]:
    """The steps cut after every expensive one (more than ``RECOMPUTE`` of ``total`` FLOPs)."""
    segments, current = [], []
    for step in steps:
        current.append(step)
        if step.flops > RECOMPUTE * total:
            segments.append(tuple(current))
            current = []
    return segments + ([tuple(current)] if current else [])


def _run_steps(z: Tensor, steps: tuple[Step, ...], cores: tuple[Tensor, ...] | list[Tensor], total: float) -> Tensor:
    """Run ``steps``; under grad, large cheap steps that lead to an expensive one are checkpointed.

    Their inputs are then recomputed in the backward pass instead of stored (the expensive
    step's own matmul is not: recomputation stops once its inputs are back).
    """
    for segment in _segments(steps, total):
        worth = len(segment) > 1 and segment[-1].flops > RECOMPUTE * total and z.numel() >= SMALL
        if worth and torch.is_grad_enabled():
            z = checkpoint(_run_segment, z, segment, *cores, use_reentrant=False)
        else:
            z = _run_segment(z, segment, *cores)
    return z


def _run_segment(z: Tensor, steps: tuple[Step, ...], *cores: Tensor) -> Tensor:
    for step in steps:
        if step.copy is not None:
            z = z.permute(step.copy)
        shape = z.shape
        pre, summed, post = shape[: step.pre], shape[step.pre: step.pre + step.k], shape[step.pre + step.k:]
        core = cores[step.core].permute(step.core_perm)
        new = core.shape[step.k:]
        w = core.reshape(math.prod(summed), math.prod(new))
        n_pre, n_summed, n_post = math.prod(pre), math.prod(summed), math.prod(post)
        if not post:
            y = z.reshape(n_pre, n_summed) @ w
        elif not pre:
            y = w.t() @ z.reshape(n_summed, n_post)
        else:
            y = _SharedBmm.apply(w.t(), z.reshape(n_pre, n_summed, n_post))
        z = y.reshape(*pre, *new, *post)
    return z


def source_layout(x: Tensor, core_shapes: list[tuple[int, ...]], max_elements: int = MAX_ELEMENTS) -> Tensor:
    """``x`` with the same shape and values, stored in the memory order its ring map reads it.

    A fixed source (Mango's packed M1) laid out once this way is read by the map's first
    step as a view: no copy per call (or per chunk), and none kept for the backward pass.
    """
    shapes = (tuple(x.shape), *map(tuple, core_shapes))
    chunking = _chunking(shapes, max_elements)
    if chunking is not None:
        shapes = _narrowed(shapes, *chunking)
    plan = ring_plan(shapes)
    if plan is None:
        return x
    return x.permute(plan.source_perm).contiguous().permute(tuple(plan.source_perm.index(d) for d in range(x.dim())))


def _chunking(shapes: tuple[tuple[int, ...], ...], max_elements: int) -> tuple[int, int] | None:
    """(the core whose target axis is cut, the chunk size) for a map too large to run whole, else None."""
    largest = _largest_intermediate(shapes)
    if largest <= max_elements:
        return None
    k = max(range(len(shapes) - 1), key=lambda i: shapes[i + 1][2])
    n_chunks = min(shapes[k + 1][2], math.ceil(largest / min(max_elements, CHUNK_ELEMENTS)))
    return k, math.ceil(shapes[k + 1][2] / n_chunks)


def _narrowed(shapes: tuple[tuple[int, ...], ...], core: int, size: int) -> tuple[tuple[int, ...], ...]:
    """The map's shapes with core ``core``'s target axis cut to ``size`` (one chunk's problem)."""
    r, n1, _, r_next = shapes[core + 1]
    return shapes[:core + 1] + ((r, n1, size, r_next),) + shapes[core + 2:]


def _contract(x: Tensor, *cores: Tensor) -> Tensor:
    shapes = tuple(tuple(t.shape) for t in (x, *cores))
    plan = ring_plan(shapes)
    if plan is None:
        return _expression(shapes)(x, *cores, backend="torch")
    return run_plan(plan, x, cores)


def ring_map(x: Tensor, cores: list[Tensor], max_elements: int = MAX_ELEMENTS, workspace: Workspace | None = None) -> Tensor:
    """Apply the ring of ``cores`` to the trailing axes of ``x`` (see the module docstring).

    A chunked map runs in ``workspace`` (:mod:`growkit.ops.mango_chunks`); a caller that maps
    repeatedly passes the same one, so that its memory is reused across calls.
    """
    shapes = tuple(tuple(t.shape) for t in (x, *cores))
    chunking = _chunking(shapes, max_elements)
    if chunking is None:
        return _contract(x, *cores)
    k, size = chunking
    out_dim = x.dim() - len(cores) + k
    pieces = cores[k].split(size, dim=2)
    plans = [ring_plan(_narrowed(shapes, k, piece.shape[2])) for piece in pieces]
    if all(plans) and not x.requires_grad:
        chunks = [Chunk(plan, k, i * size, piece.shape[2]) for i, (plan, piece) in enumerate(zip(plans, pieces))]
        return chunked_ring_map(x, cores, chunks, out_dim, workspace)
    chunks = []
    for piece in pieces:
        part = list(cores)
        part[k] = piece
        if torch.is_grad_enabled():
            chunks.append(checkpoint(_contract, x, *part, use_reentrant=False))
        else:
            chunks.append(_contract(x, *part))
    return torch.cat(chunks, dim=out_dim)


def ring_map_split(
    x: Tensor,
    cores: list[Tensor],
    sizes: list[int],
    core: int = 0,
    max_elements: int = MAX_ELEMENTS,
    workspace: Workspace | None = None,
) -> list[Tensor]:
    """``ring_map(x, cores).split(sizes, dim)`` along core ``core``'s target axis, without building the whole.

    When the plan meets ``core`` first, each piece runs the whole chain with that core's
    slice, so no work is repeated and the output is never assembled: forward and
    backward each skip one output-sized buffer, and a consumer that copies a piece
    (an unpack) frees it at once. Otherwise (Mango at R > 1) the pieces would share the
    steps before ``core``, and accumulating those steps' gradient over the pieces
    costs more than the assembly it saves: the whole map is split instead.
    """
    shapes = tuple(tuple(t.shape) for t in (x, *cores))
    plan = ring_plan(shapes)
    if plan is None or plan.steps[0].core != core or not SMALL <= _largest_intermediate(shapes) <= max_elements:
        return list(ring_map(x, cores, max_elements, workspace).split(sizes, dim=x.dim() - len(cores) + core))
    first, *rest = plan.steps
    z = x.permute(plan.source_perm)
    if first.copy is not None:
        z, first = z.permute(first.copy), replace(first, copy=None)
    z = z.contiguous()  # laid out once for every piece, not copied by each piece's first matmul
    pieces = []
    for piece in cores[core].split(sizes, dim=2):
        part = list(cores)
        part[core] = piece
        pieces.append(_run_steps(z, (first, *rest), part, plan.flops).permute(plan.out_perm))
    return pieces
