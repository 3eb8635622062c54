"""A planned tensor-ring contraction: the chain of pairwise steps and the memory layout of each.

:mod:`growkit.ops.mango_contract` searches a plan and runs it through autograd;
:mod:`growkit.ops.mango_chunks` runs one in chunks with its own backward. Both
read plans from here, so neither imports the other for them.
"""
from __future__ import annotations

from dataclasses import dataclass


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
