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

Memory: every intermediate of that order holds about ``R^2 |Y| / 2`` numbers and
autograd keeps them for the backward pass. When the largest one exceeds
``max_elements``, the map is computed in chunks of the core whose target axis is
longest (slicing a core's target axis slices the output and leaves the rest of
the problem intact, so no work is repeated) and each chunk is checkpointed: its
intermediates are recomputed in the backward pass instead of being stored, at
the price of one more forward.
"""
from __future__ import annotations

import math
from functools import lru_cache

import opt_einsum as oe
import torch
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor

#: above this many elements in one intermediate, the map is chunked and checkpointed (4 GiB of fp32)
MAX_ELEMENTS = 2**30


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


def _contract(x: Tensor, *cores: Tensor) -> Tensor:
    shapes = tuple(tuple(t.shape) for t in (x, *cores))
    return _expression(shapes)(x, *cores, backend="torch")


def ring_map(x: Tensor, cores: list[Tensor], max_elements: int = MAX_ELEMENTS) -> Tensor:
    """Apply the ring of ``cores`` to the trailing axes of ``x`` (see the module docstring)."""
    shapes = tuple(tuple(t.shape) for t in (x, *cores))
    largest = _largest_intermediate(shapes)
    if largest <= max_elements:
        return _contract(x, *cores)
    k = max(range(len(cores)), key=lambda i: cores[i].shape[2])
    n_chunks = min(cores[k].shape[2], math.ceil(largest / max_elements))
    size = math.ceil(cores[k].shape[2] / n_chunks)
    out_dim = x.dim() - len(cores) + k
    chunks = []
    for piece in cores[k].split(size, dim=2):
        part = list(cores)
        part[k] = piece
        if torch.is_grad_enabled():
            chunks.append(checkpoint(_contract, x, *part, use_reentrant=False))
        else:
            chunks.append(_contract(x, *part))
    return torch.cat(chunks, dim=out_dim)
