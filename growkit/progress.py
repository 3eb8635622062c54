"""Progress of long loops: a tqdm bar on a terminal, or a plain line every few seconds elsewhere.

A bar is useless in a log file or from a worker process, and silence looks like
a hang. Code that runs loops (training, fitting) asks :func:`progress_bar` for a
bar; whoever runs that code decides where progress goes: inside
``lines_to(sink)`` every bar is a :class:`LineProgress` that hands ``sink`` one
line per ``every`` seconds (and one at the end), outside it the loop's own
setting picks tqdm or nothing.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm.auto import tqdm

_local = threading.local()
LINE_EVERY = 10.0  #: seconds between progress lines


class LineProgress:
    """tqdm's update/set_postfix/close, printing ``desc: k/N (postfix), s`` lines instead of a bar."""

    def __init__(self, sink: Callable[[str], None], total: int, desc: str, initial: int = 0, every: float = LINE_EVERY):
        self.sink, self.total, self.desc, self.n, self.every = sink, total, desc, initial, every
        self.postfix, self.shown = "", initial
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._emit(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _emit(self, now: float) -> None:
        self.shown = self.n
        extra = f" ({self.postfix})" if self.postfix else ""
        self.sink(f"{self.desc}: {self.n}/{self.total}{extra}, {now - self.start:.0f} s")

    def close(self) -> None:
        """The last line, unless nothing moved since the one before."""
        if self.n != self.shown:
            self._emit(time.perf_counter())


@contextmanager
def lines_to(sink: Callable[[str], None], every: float = LINE_EVERY) -> Iterator[None]:
    """Inside this block (in this thread) every progress bar becomes lines handed to ``sink``."""
    old = getattr(_local, "sink", None)
    _local.sink = (sink, every)
    try:
        yield
    finally:
        _local.sink = old


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0, leave: bool = True, main: bool = True):
    """A progress object for a loop of ``total`` steps: lines under :func:`lines_to`, else tqdm (off unless ``enabled``).

    ``main=False`` (a process other than rank 0) shows nothing either way.
    """
    target = getattr(_local, "sink", None)
    if target is not None and main:
        sink, every = target
        return LineProgress(sink, total, desc, initial, every)
    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and main), leave=leave)
