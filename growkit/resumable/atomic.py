"""Atomic writes: every file and folder is written under a temporary name and renamed into place.

An interrupted write leaves either the old state or the new one, never a file
that loads as if it were whole; what a killed writer left behind is cleaned
under the run's lock (:func:`clean_temporaries`).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

_TMP = re.compile(r"^\..+\.(tmp|old)-\d+$")


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
