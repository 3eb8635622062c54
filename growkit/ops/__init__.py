"""Growth operators and the method registry.

A *method* is a named recipe: either a fixed (width operator, depth operator)
pair, or a learned operator built from the source and fit on the target's loss.
Fixed width and depth operators compose freely; ``grow(..., width=, depth=)``
overrides either half of a fixed method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.canonical import Canonical, Dims
from ..core.catalog import CATALOG, DEPTH_OPS, WIDTH_OPS, MethodInfo, method_name, refuse_unused
from ..core.errors import GrowError
from .depth import deepen
from .operator import GrowthOperator
from .width import check_factors, uneven_factors, widen
from .zero_width import check_query_groups, layer_norm_refusal, zero_extend


@dataclass(frozen=True)
class Method(MethodInfo):
    """A registry entry: a catalogue entry with, for a learned method, the ``build`` of its operator."""

    build: Callable[..., GrowthOperator] | None = None

    @property
    def learned(self) -> bool:
        return self.build is not None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


for _info in CATALOG.values():
    if not _info.learned:
        register(Method(**vars(_info)))


def get_method(name: str) -> Method:
    """The registered method ``name`` (any case); a misspelt name is refused with the closest one suggested."""
    _load_learned()
    return METHODS[method_name(name, tuple(METHODS))]


def _load_learned() -> None:
    """Learned methods register themselves on import; import those that exist."""
    import importlib

    for module in ("ligo", "mango"):
        try:
            importlib.import_module(f".{module}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{module}":
                raise


def methods() -> dict[str, str]:
    """Every method's name and one-line summary."""
    _load_learned()
    return {name: m.summary for name, m in METHODS.items()}


def choose_width(method: MethodInfo, src: Dims, tgt: Dims, *, family: str, rms_norm: bool,
                 width: str | None = None) -> str:
    """The width operator a fixed method uses at these sizes (``width`` overrides the method's).

    ``exact`` tiles for whole growth factors and zero-extends otherwise. Sizes
    no operator can reach exactly are refused here, from the sizes alone, before
    any weight is read.
    """
    chosen = width or method.width
    if width is None and method.uneven_width and uneven_factors(src, tgt):
        if not rms_norm:
            check_factors(src, tgt, note=layer_norm_refusal(family))
        chosen = method.uneven_width
    if chosen == "tile":
        zero_fits = "width 'zero' (exact's choice here) grows RMSNorm models to any size"
        check_factors(src, tgt, note=zero_fits if rms_norm else "")
    if chosen == "zero":
        if not rms_norm:
            raise GrowError(f"width operator zero: {layer_norm_refusal(family)}")
        check_query_groups(src, tgt)
    return chosen


def grow_fixed(src: Canonical, tgt_dims: Dims, width: str, depth: str, *, seed: int = 0, **options) -> Canonical:
    """Apply a fixed width operator, then a fixed depth operator."""
    if width not in WIDTH_OPS:
        raise GrowError(f"unknown width operator {width!r}; choose one of {', '.join(WIDTH_OPS)}")
    if depth not in DEPTH_OPS:
        raise GrowError(f"unknown depth operator {depth!r}; choose one of {', '.join(DEPTH_OPS)}")
    refuse_unused("a fixed method", sorted(options), ["noise"])
    kwargs = {**WIDTH_OPS[width], **options}
    width_op = zero_extend if width == "zero" else widen
    out = deepen(width_op(src, tgt_dims, seed=seed, **kwargs), tgt_dims.layers, depth)
    out.validate()
    return out


__all__ = ["METHODS", "Method", "GrowthOperator", "choose_width", "get_method", "grow_fixed", "methods", "register"]
