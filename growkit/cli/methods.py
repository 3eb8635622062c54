"""``growkit methods``: list the growth methods."""
from __future__ import annotations

import argparse

from ..core.catalog import CATALOG, DEPTH_OPS, WIDTH_OPS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list the growth methods",
        description="List the growth methods, and the width and depth operators fixed methods combine.",
        epilog="example:\n  growkit methods",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name, method in CATALOG.items():
        width = method.width
        if method.uneven_width:
            width += f" (or {method.uneven_width} where a factor is not whole)"
        kind = "learned" if method.learned else f"width={width}, depth={method.depth}"
        print(f"{name:<12} {method.summary}  [{kind}]")
    print(f"\nwidth operators: {', '.join(WIDTH_OPS)}    depth operators: {', '.join(DEPTH_OPS)}")
    return 0
