"""The ``growkit`` command line: one module per command, each with ``add_parser``.

Exit codes: 0 ok, 1 failure (a clear one-line error), 2 usage (argparse), 130
interrupted. Expected errors (:class:`GrowError`, and the environment's: a file
that cannot be read or written, memory running out) print as one line without a
traceback; ``--debug`` (before or after the command) or ``GROWKIT_DEBUG=1``
shows one. An interrupted command says how to resume it (``on_interrupt``).

Command modules import torch and transformers only inside the functions that
run a command, so building the parser (``--help``, ``growkit methods``) takes a
fraction of a second.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from ..core.errors import GrowError
from . import bench, demo, grow, inspect, methods, tokenize, train

_MODULES = (grow, inspect, methods, train, bench, tokenize, demo)
#: the commands, in the order ``--help`` lists them
COMMANDS = tuple(module.__name__.rpartition(".")[2] for module in _MODULES)


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
    for module in _MODULES:
        module.add_parser(sub)
    for command in sub.choices.values():  # ``growkit grow ... --debug`` works as well as ``growkit --debug grow``
        if "--debug" not in command._option_string_actions:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show a traceback for expected errors")
    return parser


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C, so temporary files are removed
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False) or bool(os.environ.get("GROWKIT_DEBUG"))
    if not debug:
        _quiet_transformers()
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        result = args.func(args)
    except (GrowError, OSError, MemoryError) as err:
        if debug:
            raise
        print(f"growkit {args.command}: error: {_message(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = getattr(args, "on_interrupt", None)
        print(f"growkit {args.command}: interrupted{hint(args) if hint else ''}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


def _quiet_transformers() -> None:
    """Hide transformers' advisory warnings, which would bury growkit's one-line messages, without importing it."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    else:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _message(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory; choose smaller sizes or batches (--dry-run prints an estimate)"
    text = " ".join(str(err).split())
    return text if isinstance(err, GrowError) else f"{type(err).__name__}: {text}"
