"""Growth operators and the method registry.

A *method* is a named recipe: either a fixed (width operator, depth operator)
pair, or a learned operator built from the source and fit on the target's loss.
Fixed width and depth operators compose freely; ``grow(..., width=, depth=)``
overrides either half of a fixed method, and :func:`choose_width` picks the
width operator a fixed method uses at given sizes. The learned methods register here.
"""
from __future__ import annotations

from .ligo import LIGO
from .mango import MANGO
from .operator import GrowthOperator
from .registry import METHODS, Method, choose_width, fixed_methods, get_method, grow_fixed, methods, register

register(LIGO)
register(MANGO)

__all__ = ["METHODS", "Method", "GrowthOperator", "choose_width", "fixed_methods", "get_method", "grow_fixed",
           "methods", "register"]
