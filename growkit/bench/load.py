"""The machine's load during a run, so that wall-time figures from a busy machine can be flagged.

A run's seconds measure the machine as much as the method when other work
shares its cores. :class:`LoadMonitor` samples the 1-minute load average while a
run works; a run whose load exceeded the number of cores has unreliable wall
times (its FLOPs are unaffected). The load average trails the present by about
a minute, so a short run partly sees the minute before it. The monitor also
records the process's CPU seconds: for a single-threaded run that is about what
its wall time would be on an idle machine.
"""
from __future__ import annotations

import os
import threading
import time

SAMPLE_EVERY = 2.0  #: seconds between samples


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


class LoadMonitor:
    """``with LoadMonitor() as load:`` samples the load average in a thread; ``load.record()`` summarises it."""

    def __init__(self, every: float = SAMPLE_EVERY):
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _take(self) -> None:
        value = load_average()
        if value is not None:
            self.samples.append(value)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self._take()

    def __enter__(self) -> "LoadMonitor":
        self.cpu = time.process_time()
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()
        self.cpu = time.process_time() - self.cpu

    def record(self) -> dict:
        """max and mean load over the run, the cores it is compared with (``busy``: max > cores), CPU seconds."""
        n = cores()
        if not self.samples:
            return {"max": None, "mean": None, "cores": n, "busy": False, "cpu_seconds": self.cpu}
        peak = max(self.samples)
        return {"max": peak, "mean": sum(self.samples) / len(self.samples), "cores": n, "busy": peak > n,
                "cpu_seconds": self.cpu}
