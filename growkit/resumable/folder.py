"""A run folder: what the run is (``run.json``), its lock, and the checks before anything is written.

Rerunning the same command finds ``run.json`` and resumes; a different command
is refused, and so is a folder that holds anything else.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch

from ..core.errors import GrowError
from .atomic import atomic_write_text, clean_temporaries

RUN_FILE = "run.json"
LOCK_FILE = ".lock"


def digest_tensors(tensors: dict[str, torch.Tensor] | list) -> str:
    """sha256 of tensors' names, shapes, dtypes and bytes (the weights a run starts from, the data it trains on)."""
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    for key, t in items:
        if isinstance(t, (dict, list, tuple)):
            h.update(f"{key}:".encode() + digest_tensors(t if isinstance(t, dict) else list(t)).encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_run(folder: Path) -> dict | None:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def check_same_run(folder: Path, run: dict, what: str) -> bool:
    """True when ``folder`` holds a checkpoint of this very ``run`` (resume), False when it holds none.

    A folder that holds another run's checkpoints is refused: resuming it would
    mix two runs.
    """
    old = read_run(folder)
    if old is None:
        return False
    canon = json.loads(json.dumps(run))
    if old != canon:
        diff = ", ".join(_differences(old, canon)[:4]) or "unknown"
        raise GrowError(
            f"{folder} holds a checkpoint of a different {what} (it differs in: {diff}); "
            f"rerun the same command to resume it, or delete {folder} to start over"
        )
    return True


def write_run(folder: Path, run: dict) -> None:
    atomic_write_text(Path(folder) / RUN_FILE, json.dumps(run, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (one growkit process per run folder); freed when the process dies."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    handle = open(path, "a+")
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock (Windows): no protection against two writers
            pass
        except OSError:
            handle.close()
            raise GrowError(f"{folder} is in use by another growkit process; wait for it or choose another folder") from None
    except BaseException:
        handle.close()
        raise
    try:
        clean_temporaries(folder)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()


def check_unused(folder: Path, *, allowed: bool = False, label: str = "output folder",
                 remedy: str = "choose a new one") -> bool:
    """The one check of a folder a command will write: whether it holds anything.

    A path that exists and is not a folder is refused, and so is a folder that
    holds anything unless ``allowed`` (the caller resumes it, or overwrites it);
    nothing in it is touched.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GrowError(f"{label} {folder} exists and is not a folder; choose a new one")
    used = folder.is_dir() and any(folder.iterdir())
    if used and not allowed:
        raise GrowError(f"{label} {folder} exists and is not empty; {remedy}")
    return used


def claim(stack: contextlib.ExitStack, folder: Path, run: dict, what: str, *, extending: bool = False) -> bool:
    """Rank 0's claim on a run folder for the life of ``stack``: refuse another run's, lock it, record ``run``.

    Returns whether the folder held this very run (a resume). ``extending``
    accepts the same run with fewer steps (the caller has vetted it).
    """
    folder = Path(folder)
    resuming = extending or (check_same_run(folder, run, what) if folder.exists() else False)
    if not resuming and folder.exists() and any(p.name != LOCK_FILE for p in folder.iterdir()):
        raise GrowError(f"{folder} exists and is not a growkit checkpoint folder; move or delete it")
    folder.mkdir(parents=True, exist_ok=True)
    stack.enter_context(run_lock(folder))
    write_run(folder, run)
    return resuming
