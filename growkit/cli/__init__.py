"""The ``growkit`` command line: one module per command, each with ``add_parser``.

Exit codes: 0 ok, 1 failure (a clear one-line error), 2 usage. Expected errors
(:class:`GrowError`) print without a traceback; ``--debug`` shows one.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..core.errors import GrowError

COMMANDS = ("grow", "inspect", "methods", "train", "bench", "demo")


class _Parser(argparse.ArgumentParser):
    """argparse with examples kept verbatim in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="growkit",
        description="Grow a small pretrained transformer into a larger one, train it, and measure the savings.",
        epilog="example:\n  growkit demo\n  growkit grow small/ big/ --method exact --hidden 256 --layers 8",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except GrowError as err:
        if args.debug or os.environ.get("GROWKIT_DEBUG"):
            raise
        print(f"growkit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"growkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
