"""The method registry: every method an object, with its operators, its options and its costs.

A fixed method pairs a width operator (unit copies or tiling,
:class:`~growkit.ops.width.WidthOperator`, or zero-extension,
:class:`~growkit.ops.zero_width.ZeroWidthOperator`; each refuses the sizes it
cannot reach with its ``check``) with a
:class:`~growkit.ops.depth.DepthOperator`; a learned one builds a
:class:`~growkit.ops.operator.GrowthOperator` and may say what that operator
costs without building it (``parameter_count``, ``materialize_flops``: for the
estimates of a target too large to build, even on the meta device). Options are
checked in one place (:meth:`MethodInfo.check_options`). The learned methods
register in :mod:`growkit.ops`, explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.canonical import Canonical, Dims
from ..core.catalog import CATALOG, MethodInfo, method_name
from ..core.errors import GrowError
from ..core.registry import register_once
from .depth import DEPTH_OPERATORS, DepthOperator
from .operator import GrowthOperator
from .width import COPYING_OPERATORS, WidthOperator, check_factors, uneven_factors
from .zero_width import ZERO, ZeroWidthOperator, layer_norm_refusal

#: a width operator of either kind: unit copies or tiling, or zero-extension
AnyWidthOperator = WidthOperator | ZeroWidthOperator
#: the width operators, by the catalogue's names
WIDTH_OPERATORS: dict[str, AnyWidthOperator] = {**COPYING_OPERATORS, ZERO.name: ZERO}

#: ``(source, target_dims, **options)`` -> a count, for an operator that is not built
CostHook = Callable[..., float]


@dataclass(frozen=True)
class Method(MethodInfo):
    """A registry entry: a catalogue entry and, for a learned method, how to build its operator and price it."""

    builder: Callable[..., GrowthOperator] | None = None
    parameter_count: CostHook | None = None
    materialize_flops: CostHook | None = None

    @property
    def learned(self) -> bool:
        return self.builder is not None

    @property
    def width_operator(self) -> AnyWidthOperator:
        return width_operator(self.width)

    @property
    def depth_operator(self) -> DepthOperator:
        return depth_operator(self.depth)

    def build(self, source: Canonical, target_dims: Dims, *, seed: int = 0, **options) -> GrowthOperator:
        """The learned operator from ``source`` to ``target_dims`` (options checked first)."""
        if self.builder is None:
            raise GrowError(f"{self.name} is a fixed method: it has no operator to build; use grow_fixed")
        self.check_options(options)
        return self.builder(source, target_dims, seed=seed, **options)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (refused when its name is taken)."""
    return register_once(METHODS, method.name, method, "method")


for _info in CATALOG.values():
    if not _info.learned:
        register(Method(**vars(_info)))


def width_operator(name: str) -> AnyWidthOperator:
    if name not in WIDTH_OPERATORS:
        raise GrowError(f"unknown width operator {name!r}; choose one of {', '.join(WIDTH_OPERATORS)}")
    return WIDTH_OPERATORS[name]


def depth_operator(name: str) -> DepthOperator:
    if name not in DEPTH_OPERATORS:
        raise GrowError(f"unknown depth operator {name!r}; choose one of {', '.join(DEPTH_OPERATORS)}")
    return DEPTH_OPERATORS[name]


def get_method(name: str) -> Method:
    """The registered method ``name`` (any case); a misspelt name is refused with the closest one suggested."""
    return METHODS[method_name(name, tuple(METHODS))]


def fixed_methods() -> dict[str, Method]:
    """The fixed methods, the starts a learned operator can take."""
    return {name: m for name, m in METHODS.items() if not m.learned}


def methods() -> dict[str, str]:
    """Every method's name and one-line summary."""
    return {name: m.summary for name, m in METHODS.items()}


def choose_width(method: MethodInfo, src: Dims, tgt: Dims, *, family: str, rms_norm: bool,
                 width: str | None = None) -> str:
    """The width operator a fixed method uses at these sizes (``width`` overrides the method's).

    A method with an ``uneven_width`` (``exact``) switches to it where a growth
    factor is not whole. Sizes the chosen operator cannot reach are refused here,
    from the sizes alone, before any weight is read.
    """
    chosen = width or method.width
    if width is None and method.uneven_width and uneven_factors(src, tgt):
        if not rms_norm:
            check_factors(src, tgt, note=layer_norm_refusal(family))
        chosen = method.uneven_width
    width_operator(chosen).check(src, tgt, family=family, rms_norm=rms_norm)
    return chosen


def grow_fixed(src: Canonical, tgt_dims: Dims, width: str, depth: str, *, seed: int = 0,
               noise: float | None = None) -> Canonical:
    """Apply a fixed width operator, then a fixed depth operator."""
    widen, deepen = width_operator(width), depth_operator(depth)
    out = deepen(widen(src, tgt_dims, noise=noise, seed=seed), tgt_dims.layers)
    out.validate()
    return out
