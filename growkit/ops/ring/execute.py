"""Running a planned tensor-ring contraction through autograd: whole, split along a target axis, or in chunks.

See :mod:`growkit.ops.ring` for why each choice is made.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch.utils.checkpoint import checkpoint

from .chunks import Chunk, Workspace, chunked_ring_map
from .plan import Plan, Step, _expression, _largest_intermediate, ring_plan

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

    A chunked map runs in ``workspace`` (:mod:`growkit.ops.ring.chunks`); a caller that maps
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
