"""Numbered checkpoints in a run folder: found newest first, pruned, written only when finite."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch

from .. import distributed
from .atomic import remove
from .rng import gathered_rng


def numbered(folder: Path, prefix: str, suffix: str = "") -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``<prefix><step><suffix>`` in ``folder``, oldest first."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            m = pattern.match(path.name)
            if m:
                found.append((int(m.group(1)), path))
    return sorted(found)


def prune(folder: Path, prefix: str, suffix: str = "", keep: int = 1) -> None:
    """Keep the newest ``keep`` numbered checkpoints (0: keep all); the newest is written before this runs."""
    if keep <= 0:
        return
    for _, path in numbered(folder, prefix, suffix)[:-keep]:
        remove(path)


def all_finite(tensors) -> bool:
    """Whether every tensor holds only finite numbers (a checkpoint is only written then)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def save_checkpoint(write: Callable[[dict], None]) -> None:
    """Save, then wait: rank 0 runs ``write`` with every process's RNG state, and every process waits for it.

    So a checkpoint on disk is one that every process has passed, and each
    process resumes its own dropout stream.
    """
    rng = gathered_rng()
    if distributed.is_main():
        write(rng)
    distributed.barrier()
