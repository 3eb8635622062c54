"""Growth operators and the method registry.

A *method* is a named recipe: either a fixed (width operator, depth operator)
pair, or a learned operator built from the source and fit on the target's loss.
Fixed width and depth operators compose freely; ``grow(..., width=, depth=)``
overrides either half of a fixed method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..core.canonical import Canonical, Dims
from ..core.errors import GrowError
from .depth import DEPTH_MAPS, deepen
from .operator import GrowthOperator
from .width import widen

#: width operators: keyword arguments of :func:`widen`
WIDTH_OPS: dict[str, dict] = {
    "net2net": {"strategy": "random", "noise": 0.01},
    "aki": {"strategy": "random", "knowledge_from_next_layer": True},
    "tile": {"strategy": "tile", "noise": 0.01},
}
DEPTH_OPS = tuple(DEPTH_MAPS)


@dataclass(frozen=True)
class Method:
    """A registry entry. Fixed methods name ``width`` and ``depth``; learned ones have ``build``."""

    name: str
    summary: str
    width: str | None = None
    depth: str | None = None
    build: Callable[..., GrowthOperator] | None = None
    options: tuple[str, ...] = field(default=())

    @property
    def learned(self) -> bool:
        return self.build is not None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


for _m in (
    Method("stackbert", "StackBERT: repeat the whole layer stack; Net2Net copies for width", "net2net", "stack"),
    Method("interpolate", "interpolation: repeat each layer in place; Net2Net copies for width", "net2net", "interpolate"),
    Method("net2net", "Net2Net: random unit copies with split outgoing weights; identity layers for depth", "net2net", "identity"),
    Method("bert2bert", "bert2BERT AKI: new units take the next layer's weights; stacked depth", "aki", "stack"),
    Method("exact", "function-preserving: tiled width with cancelling noise; identity layers for depth", "tile", "identity"),
):
    register(_m)


def get_method(name: str) -> Method:
    _load_learned()
    if name not in METHODS:
        raise GrowError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


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


def grow_fixed(src: Canonical, tgt_dims: Dims, width: str, depth: str, *, seed: int = 0, **options) -> Canonical:
    """Apply a fixed width operator, then a fixed depth operator."""
    if width not in WIDTH_OPS:
        raise GrowError(f"unknown width operator {width!r}; choose one of {', '.join(WIDTH_OPS)}")
    if depth not in DEPTH_OPS:
        raise GrowError(f"unknown depth operator {depth!r}; choose one of {', '.join(DEPTH_OPS)}")
    unknown = sorted(set(options) - {"noise"})
    if unknown:
        raise GrowError(f"unknown option {unknown[0]!r} for a fixed method (only 'noise' is accepted)")
    kwargs = {**WIDTH_OPS[width], **options}
    out = deepen(widen(src, tgt_dims, seed=seed, **kwargs), tgt_dims.layers, depth)
    out.validate()
    return out


__all__ = ["METHODS", "Method", "GrowthOperator", "get_method", "grow_fixed", "methods", "register"]
