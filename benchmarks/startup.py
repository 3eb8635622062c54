"""How long the command line takes to start, against importing torch, in one run on one machine.

Each command is a fresh interpreter (``python -m growkit ...`` with this
checkout first on the path), timed from launch to exit. Runs alternate
(import torch, growkit --help, growkit methods, growkit grow --help, ...) so
that load from other processes hits all of them alike; the figures are the
medians over the rounds, and the ratio is the median of the rounds' paired
ratios against ``python -c "import torch"``. The target: ``growkit --help``
under half of ``import torch``.

    python benchmarks/startup.py              # 7 rounds
    python benchmarks/startup.py --rounds 15
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    'python -c "import torch"': ["-c", "import torch"],
    "growkit --help": ["-m", "growkit", "--help"],
    "growkit methods": ["-m", "growkit", "methods"],
    "growkit grow --help": ["-m", "growkit", "grow", "--help"],
}
REFERENCE = 'python -c "import torch"'


def seconds(args: list[str]) -> float:
    """Wall seconds from launching a fresh interpreter with ``args`` to its exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file cache once
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'/ import torch':>15}")
    for name, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, times[REFERENCE]))
        print(f"{name:<28} {statistics.median(values):>9.2f} {min(values):>7.2f} {ratio:>15.2f}")


if __name__ == "__main__":
    main()
