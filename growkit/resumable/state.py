"""Checkpoint state files without pickles: tensors to safetensors, everything else to JSON.

A checkpoint's state (optimiser, scheduler, RNG states, counters) is one
safetensors file: every tensor in it is a safetensors tensor and everything else
is JSON in the file's metadata, so loading a checkpoint never unpickles anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..core.errors import GrowError
from .atomic import atomic_write_bytes

_META_KEY = "growkit_state"


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
