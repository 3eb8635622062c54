"""Registries by name (families, methods): an entry is added once, and a second one of that name is refused."""
from __future__ import annotations

from typing import TypeVar

from .errors import GrowError

T = TypeVar("T")


def register_once(table: dict[str, T], name: str, entry: T, what: str) -> T:
    """Add ``entry`` to ``table`` as ``name``; refused when the name is taken, so no entry is silently replaced."""
    if name in table:
        raise GrowError(f"{what} {name!r} is registered already")
    table[name] = entry
    return entry
