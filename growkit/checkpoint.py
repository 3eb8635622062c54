"""Resumable runs: state files without pickles, atomic writes, RNG capture, run folders and their lock.

A checkpoint's state (optimiser, scheduler, RNG states, counters) is one
safetensors file: every tensor in it is a safetensors tensor and everything else
is JSON in the file's metadata, so loading a checkpoint never unpickles anything.
Every file and folder is written under a temporary name and renamed into place,
so an interrupted write leaves either the old state or the new one, never a
file that loads as if it were whole. A run folder holds ``run.json`` (what the
run is: its command, settings and the digests of its inputs); rerunning the
same command finds it and resumes, a different command is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from .core.errors import GrowError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
_META_KEY = "growkit_state"
_TMP = re.compile(r"^\..+\.(tmp|old)-\d+$")

# --- a state codec: tensors to safetensors, the rest to JSON ----------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON, its tensors moved to ``tensors`` (tuples, int keys and arrays keep their types)."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    try:  # numpy's RNG state holds an array and numpy scalars
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None and isinstance(obj, np.ndarray):
        return {"__ndarray__": _encode(torch.from_numpy(obj.astype(np.int64)), tensors), "dtype": str(obj.dtype)}
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    if "__ndarray__" in obj:
        array = _decode(obj["__ndarray__"], tensors)
        return None if array is None else array.numpy().astype(obj["dtype"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def state_bytes(state: dict) -> bytes:
    """``state`` as the bytes of one safetensors file (tensors as tensors, the rest as JSON metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_encode(state, tensors))
    return st_save(tensors, metadata={_META_KEY: meta})


def save_state(path: str | Path, state: dict) -> Path:
    """Write ``state`` (nested dicts, lists, tuples, numbers, strings, tensors) atomically to ``path``."""
    return atomic_write_bytes(Path(path), state_bytes(state))


def load_state(path: str | Path, tensors: bool = True) -> dict:
    """Read a state written by :func:`save_state`; a damaged file is a :class:`GrowError`.

    ``tensors=False`` reads only the JSON part (its tensors come back as None):
    enough to check a checkpoint's settings without loading its optimiser state.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k).clone() if tensors else None for k in f.keys()}
        if meta is None:
            raise ValueError("no growkit state in its metadata")
        return _decode(json.loads(meta), tensors)
    except GrowError:
        raise
    except Exception as err:  # safetensors raises several types for a damaged file
        raise GrowError(f"cannot read the checkpoint state {path}: {type(err).__name__}: {err}; delete it to start over") from None


# --- atomic writes ---------------------------------------------------------------


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folder) to disk before it is renamed into place."""
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _umask() -> int:
    """The process's umask (read from /proc where it can be, so it is never changed, even for an instant)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(folder: Path) -> None:
    """Give every file under ``folder`` mode 0666 and every folder 0777, less the umask (0644/0755 under 022).

    Some writers (safetensors via a temporary file) create 0600 files; a saved
    model is meant to be read by whoever may read the folder.
    """
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A hidden name next to ``path`` for writing it (``.NAME.tmp-PID``), never loaded as a result."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary sibling, flush it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def clean_temporaries(folder: Path) -> None:
    """Remove temporary files and folders that a killed writer left in ``folder`` (call it under the lock)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _TMP.match(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


# --- RNG -------------------------------------------------------------------------


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


# --- checkpoints in a folder -----------------------------------------------------


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


def remove(path: Path) -> None:
    """Delete a file or folder by first renaming it to a temporary name, so a kill never leaves half of it."""
    path = Path(path)
    if not path.exists():
        return
    doomed = temp_sibling(path, "old")
    try:
        path.rename(doomed)
    except OSError:
        doomed = path
    if doomed.is_dir():
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            doomed.unlink()


def all_finite(tensors) -> bool:
    """Whether every tensor holds only finite numbers (a checkpoint is only written then)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# --- run folders: identity and lock -----------------------------------------------


def digest_files(paths) -> str:
    """sha256 over the names and bytes of ``paths`` (missing ones are skipped)."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def digest_model_folder(folder: Path) -> str:
    """What a run started from: the config and every safetensors file of a model folder."""
    folder = Path(folder)
    return digest_files([folder / "config.json", *sorted(folder.glob("*.safetensors"))])


def digest_tensors(tensors: dict[str, torch.Tensor] | list) -> str:
    """sha256 of tensors' names, shapes, dtypes and bytes (the data a run trains on)."""
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
