"""A chunked ring map run in one reused workspace, with a hand-written backward.

Why: a map whose intermediates do not fit in memory is cut into chunks along one
core's target axis (:func:`growkit.ops.ring.execute.ring_map`). Run through
autograd, every step of every chunk, and of its recomputation in the backward
pass, allocates a fresh multi-GB intermediate. Memory a process has not touched
yet is expensive: on the development VM a fresh GiB costs 0.2-3 s to fill,
against 0.04 s to refill one already held, which made a chunked map run at a
quarter of the matmul's speed. Here every chunk writes into the same few buffers
(:class:`Workspace`) with ``out=`` matmuls, so fresh memory is paid once per
workspace, not once per chunk and step.

Forward: the steps of a chunk ping-pong between two buffers and the chunk's
result is copied into its slice of the output. Only the source and the cores are
saved. Backward, for each chunk: recompute its forward keeping every step's
input (a stored input is the permuted copy when the step permutes), then walk
the steps back. A step's core gradient reads its stored input; the gradient for
that input then overwrites the input's own buffer. A chain of n steps uses n
buffers, each the size of the chunk's largest intermediate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .plan import Plan, Step

Tensor = torch.Tensor


class Workspace:
    """Flat scratch buffers kept between calls and handed out by index.

    A caller that maps repeatedly (Mango's fit) keeps one, so that only the first
    call pays for fresh memory; the memory goes when the workspace does.
    """

    def __init__(self) -> None:
        self._buffers: list[Tensor] = []

    def take(self, count: int, numel: int, like: Tensor) -> list[Tensor]:
        """``count`` buffers of at least ``numel`` elements of ``like``'s dtype and device."""
        for i in range(count):
            if i == len(self._buffers):
                self._buffers.append(like.new_empty(numel))
            elif self._buffers[i].numel() < numel or self._buffers[i].dtype != like.dtype or self._buffers[i].device != like.device:
                del self._buffers[i]  # free the small buffer before allocating its replacement
                self._buffers.insert(i, like.new_empty(numel))
        return self._buffers[:count]


@dataclass(frozen=True)
class Chunk:
    """One chunk: ``plan`` run with core ``core`` narrowed to ``[start, start + size)`` on its target axis."""

    plan: Plan
    core: int
    start: int
    size: int


def chunked_ring_map(x: Tensor, cores: list[Tensor], chunks: list[Chunk], out_dim: int, workspace: Workspace | None) -> Tensor:
    """The ring map of ``x``, chunk by chunk in ``workspace`` (a fresh one when None).

    ``x`` gets no gradient: it is a fixed source (Mango's packed M1).
    """
    return _ChunkedRingMap.apply(x, chunks, out_dim, workspace or Workspace(), *cores)


class _ChunkedRingMap(torch.autograd.Function):
    """The map's forward and backward, chunk by chunk in the workspace (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, chunks: list[Chunk], out_dim: int, workspace: Workspace, *cores: Tensor) -> Tensor:
        ctx.chunks, ctx.out_dim, ctx.workspace = chunks, out_dim, workspace
        ctx.save_for_backward(x, *cores)
        out = x.new_empty(*x.shape[: x.dim() - len(cores)], *(c.shape[2] for c in cores))
        buffers = workspace.take(2, max(_largest(x, cores, chunk) for chunk in chunks), x)
        for chunk in chunks:
            z, held = x.permute(chunk.plan.source_perm).contiguous(), None
            for step, w in zip(chunk.plan.steps, _weights(cores, chunk)):
                if step.copy is not None:
                    held = 0 if held is None else 1 - held
                    z = _copy_into(buffers[held], z.permute(step.copy))
                held = 0 if held is None else 1 - held
                z = _apply(step, z, w, buffers[held])
            out.narrow(out_dim, chunk.start, chunk.size).copy_(z.permute(chunk.plan.out_perm))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *cores = ctx.saved_tensors
        chunks: list[Chunk] = ctx.chunks
        grads = [torch.zeros_like(c) if ctx.needs_input_grad[4 + k] else None for k, c in enumerate(cores)]
        count = max(len(c.plan.steps) + (c.plan.steps[0].copy is not None) for c in chunks)
        buffers = ctx.workspace.take(count, max(_largest(x, cores, chunk) for chunk in chunks), x)
        for chunk in chunks:
            free = list(buffers)
            weights = _weights(cores, chunk)
            inputs = _recompute_inputs(x, chunk.plan, weights, free)
            g_buffer = free.pop()
            g = _copy_into(g_buffer, grad.narrow(ctx.out_dim, chunk.start, chunk.size).permute(_inverse(chunk.plan.out_perm)))
            for i in reversed(range(len(weights))):
                step, (z, z_buffer) = chunk.plan.steps[i], inputs[i]
                _add_core_grad(grads, chunk, step, _backward(step, z, weights[i], g, input_grad=i > 0))
                if i == 0:
                    break
                free.append(g_buffer)
                g, g_buffer = z, z_buffer  # z's buffer now holds z's gradient
                if step.copy is not None:  # back to the layout before the step's permute
                    unpermuted = free.pop()
                    g = _copy_into(unpermuted, g.permute(_inverse(step.copy)))
                    free.append(g_buffer)
                    g_buffer = unpermuted
        return (None, None, None, None, *grads)


def _recompute_inputs(x: Tensor, plan: Plan, weights: list[Tensor], free: list[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
    """Every step's input (after its permute), each with the buffer holding it (None: a view of ``x``)."""
    z, held, inputs = x.permute(plan.source_perm).contiguous(), None, []
    for i, (step, w) in enumerate(zip(plan.steps, weights)):
        if step.copy is not None:
            buffer = free.pop()
            z = _copy_into(buffer, z.permute(step.copy))
            if held is not None:
                free.append(held)
            held = buffer
        inputs.append((z, held))
        if i + 1 < len(plan.steps):
            held = free.pop()
            z = _apply(step, z, w, held)
    return inputs


def _weights(cores, chunk: Chunk) -> list[Tensor]:
    """Each step's core permuted as the step reads it (summed axes first), the chunked core narrowed."""
    weights = []
    for step in chunk.plan.steps:
        core = cores[step.core]
        if step.core == chunk.core:
            core = core.narrow(2, chunk.start, chunk.size)
        weights.append(core.permute(step.core_perm))
    return weights


def _largest(x: Tensor, cores, chunk: Chunk) -> int:
    """The chunk's largest intermediate (a permuted copy included), elements."""
    shape, largest = [x.shape[d] for d in chunk.plan.source_perm], 0
    for step, w in zip(chunk.plan.steps, _weights(cores, chunk)):
        if step.copy is not None:
            shape = [shape[d] for d in step.copy]
        shape = _output_shape(step, shape, w)
        largest = max(largest, math.prod(shape))
    return largest


def _add_core_grad(grads: list[Tensor | None], chunk: Chunk, step: Step, grad_w: Tensor) -> None:
    target = grads[step.core]
    if target is None:
        return
    if step.core == chunk.core:
        target = target.narrow(2, chunk.start, chunk.size)
    target = target.permute(step.core_perm)
    target.add_(grad_w.view(target.shape))


def _output_shape(step: Step, shape, core: Tensor) -> list[int]:
    """The shape of ``step``'s output for an input of ``shape``; ``core`` permuted as the step reads it."""
    return [*shape[: step.pre], *core.shape[step.k:], *shape[step.pre + step.k:]]


def _matrices(step: Step, z: Tensor, core: Tensor) -> tuple[Tensor, Tensor, int]:
    """The step as matrices: ``z`` viewed as ``[pre, K, post]`` (a 2-D view when pre or post is
    empty), the core as ``[K, N]``, and which of the three forms it is (0: no post, 1: no pre, 2: both)."""
    n_pre = math.prod(z.shape[: step.pre])
    k = math.prod(z.shape[step.pre: step.pre + step.k])
    n_post = math.prod(z.shape[step.pre + step.k:])
    w = core.reshape(k, -1)
    if step.pre + step.k == z.dim():
        return z.view(n_pre, k), w, 0
    if step.pre == 0:
        return z.view(k, n_post), w, 1
    return z.view(n_pre, k, n_post), w, 2


def _apply(step: Step, z: Tensor, core: Tensor, buffer: Tensor) -> Tensor:
    """``z`` contracted with ``core`` as ``step`` lays it out, written into ``buffer``."""
    y = _shaped(buffer, _output_shape(step, z.shape, core))
    z, w, form = _matrices(step, z, core)
    if form == 0:
        torch.mm(z, w, out=y.view(z.shape[0], w.shape[1]))
    elif form == 1:
        torch.mm(w.t(), z, out=y.view(w.shape[1], z.shape[1]))
    else:
        a = w.t()
        for zb, yb in zip(z, y.view(z.shape[0], w.shape[1], z.shape[2])):
            torch.mm(a, zb, out=yb)
    return y


def _backward(step: Step, z: Tensor, core: Tensor, g: Tensor, input_grad: bool) -> Tensor:
    """The gradient for the step's ``[K, N]`` core matrix; with ``input_grad``, the gradient
    for ``z`` overwrites ``z`` in place (its value is not needed afterwards)."""
    z, w, form = _matrices(step, z, core)
    if form == 0:
        g = g.view(z.shape[0], w.shape[1])
        grad_w = z.t() @ g
        if input_grad:
            torch.mm(g, w.t(), out=z)
    elif form == 1:
        g = g.view(w.shape[1], z.shape[1])
        grad_w = z @ g.t()
        if input_grad:
            torch.mm(w, g, out=z)
    else:
        grad_w = torch.zeros_like(w)
        for zb, gb in zip(z, g.view(z.shape[0], w.shape[1], z.shape[2])):
            grad_w.addmm_(zb, gb.t())
            if input_grad:
                torch.mm(w, gb, out=zb)
    return grad_w


def _copy_into(buffer: Tensor, z: Tensor) -> Tensor:
    return _shaped(buffer, z.shape).copy_(z)


def _shaped(buffer: Tensor, shape) -> Tensor:
    return buffer[: math.prod(shape)].view(tuple(shape))


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(perm.index(d) for d in range(len(perm)))
