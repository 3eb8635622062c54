"""Random-number state: captured with a checkpoint, per process, so a resumed run draws what it would have."""
from __future__ import annotations

import random
from typing import Any

import torch

from .. import distributed


def rng_state() -> dict:
    """Torch's CPU generator, Python's ``random`` and numpy's global generator (if numpy is installed)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_rng() -> dict:
    """Every process's RNG state, as a checkpoint stores it: ``rng`` (rank 0's) and, with several, ``rng_ranks``."""
    rngs = distributed.gather_objects(rng_state())
    return {"rng": rngs[0], **({"rng_ranks": rngs} if len(rngs) > 1 else {})}


def restore_rng(state: dict, rank: int) -> None:
    """Set this process's generators from a checkpoint (a rank the checkpoint did not know takes rank 0's)."""
    saved = state.get("rng_ranks") or [state["rng"]]
    set_rng_state(saved[rank] if rank < len(saved) else saved[0])
