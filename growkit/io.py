"""Loading and saving model folders, safely: local files only, safetensors only, atomic writes.

Every command that reads or writes a ``save_pretrained`` folder goes through
here, so each refusal (no folder, no config, an unsupported class, pickle-only
weights, a corrupt file) is one clear :class:`GrowError`, and a crash mid-save
never leaves a half-written model where a good one was.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from .arch import ADAPTERS, adapter_for, supported
from .resumable.atomic import fsync_tree, publish_modes, temp_sibling
from .resumable.folder import check_unused
from .resumable.state import load_state, state_bytes
from .core.errors import GrowError

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
STATE_FILE = "training_state.safetensors"  #: optimiser, scheduler, RNG and counters (no pickle)
#: how a tokenizer was loaded, which transformers writes back into tokenizer_config.json; not part of the tokenizer
LOAD_ONLY_KEYS = ("local_files_only", "is_local", "cache_dir", "force_download", "token",
                  "revision", "subfolder", "_commit_hash")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide transformers' per-file progress bars, which would break the training bar."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The HF class named by ``config.architectures[0]`` (else the family's head model), if growkit supports it."""
    names = getattr(config, "architectures", None) or [None]
    return adapter_for(config).model_class(names[0])


def load_config(folder: str | Path) -> PretrainedConfig:
    """The config of a model folder, checked: the model type first, then the field types, then the sizes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GrowError(f"model folder {folder} does not exist{_hub_hint(folder)}")
    path = folder / "config.json"
    if not path.is_file():
        raise GrowError(f"{folder} has no config.json; is it a folder written by save_pretrained?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise GrowError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise GrowError(f"{path} holds a JSON {type(raw).__name__}, not an object of config fields")
    model_type = raw.get("model_type")
    if model_type is None:
        raise GrowError(f"{path} has no model_type; growkit supports {supported()}")
    if model_type not in ADAPTERS:
        raise GrowError(f"unsupported model type {model_type!r} in {path}; growkit supports {supported()}")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers validates field types and raises its own error types
        raise GrowError(f"{path}: {_one_line(err)}") from None
    check_config(config, path)
    return config


def _hub_hint(folder: Path) -> str:
    """For a missing folder named like a Hub id (``owner/name``): growkit reads local folders, and how to get one."""
    parts = str(folder).split("/")
    if len(parts) != 2 or not all(parts) or parts[0] in (".", "..") or folder.parent.exists():
        return ""
    return (f"; growkit reads local folders only and never downloads: on a machine with internet, run "
            f"`hf download {folder} --local-dir {parts[1]}` (huggingface_hub; older versions: "
            f"`huggingface-cli download`) or `from_pretrained('{folder}').save_pretrained('{parts[1]}')`, "
            f"then pass that folder")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_config(config: PretrainedConfig, where: str | Path = "config") -> None:
    """Refuse a config whose sizes are not positive integers or do not fit together, before any model is built."""
    adapter = adapter_for(config)
    try:
        dims = adapter.dims(config)
    except (TypeError, ZeroDivisionError, AttributeError) as err:
        raise GrowError(f"{where}: the sizes cannot be read: {_one_line(err)}") from None
    for name in ("hidden", "ffn", "heads", "kv_heads", "head_dim", "layers"):
        value = getattr(dims, name)
        if not _positive_int(value):
            raise GrowError(f"{where}: {name} must be a positive integer, got {value!r}")
    if dims.heads % dims.kv_heads:
        raise GrowError(f"{where}: {dims.kv_heads} key/value heads do not divide {dims.heads} attention heads")
    if adapter.head_dim_from_hidden and dims.heads * dims.head_dim != dims.hidden:
        raise GrowError(f"{where}: {dims.heads} attention heads do not divide hidden size {dims.hidden}")
    for name in adapter.count_fields:
        value = getattr(config, name, None)
        if value is not None and not _positive_int(value):
            raise GrowError(f"{where}: {name} must be a positive integer, got {value!r}")


def load_pretrained(folder: str | Path) -> PreTrainedModel:
    """The model saved in ``folder``, in fp32 and eval mode, from its safetensors weights only."""
    folder = Path(folder)
    config = load_config(folder)
    cls = model_class(config)
    if not any((folder / name).is_file() for name in SAFETENSORS):
        if any((folder / name).is_file() for name in PICKLED):
            raise GrowError(
                f"{folder} holds only pickled weights (pytorch_model.bin), which growkit does not load because "
                "unpickling can run code; if you trust the file, convert them to model.safetensors with "
                f"transformers: {cls.__name__}.from_pretrained('{folder}').save_pretrained('{folder}')"
            )
        raise GrowError(f"{folder} has no model.safetensors")
    try:
        with _quiet():
            model, info = cls.from_pretrained(
                str(folder), config=config, local_files_only=True, use_safetensors=True,
                dtype=torch.float32, output_loading_info=True,
            )
    except Exception as err:  # safetensors and transformers raise many types for a bad file
        raise GrowError(f"cannot load the weights in {folder} (corrupt or truncated file?): {type(err).__name__}: {_one_line(err)}") from None
    broken = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if broken:
        raise GrowError(f"{folder}: the weights do not fit {cls.__name__}: missing or mis-shaped {broken[:5]}")
    bad = next((name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise GrowError(f"{folder}: the weights hold NaN or infinite values (first in {bad}); the model cannot be used")
    model.eval()
    return model


def save_pretrained(
    model: PreTrainedModel,
    folder: str | Path,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
    state: dict | None = None,
    extra_files: list[Path] = (),
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (safetensors), its tokenizer, an optional training ``state`` and copies of
    ``extra_files`` (e.g. a preprocessor config) to ``folder``. ``state_dict``
    replaces the model's own weights (FSDP: the full weights gathered from the shards).

    A non-empty ``folder`` is refused unless ``overwrite``. Files are written to a
    hidden sibling folder first and renamed into place, so ``folder`` holds either
    the old model or the complete new one.
    """
    folder = Path(folder)
    check_unused(folder, allowed=overwrite, label="folder", remedy="choose another folder or pass overwrite")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = temp_sibling(folder), temp_sibling(folder, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet():
            if state_dict is None:
                model.save_pretrained(str(tmp))
            else:
                model.save_pretrained(str(tmp), state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
            _drop_load_only_keys(tmp / "tokenizer_config.json")
        if state is not None:
            (tmp / STATE_FILE).write_bytes(state_bytes(state))
        for path in extra_files:
            shutil.copy2(path, tmp / Path(path).name)
        publish_modes(tmp)
        fsync_tree(tmp)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _drop_load_only_keys(path: Path) -> None:
    """Keep a saved tokenizer_config.json as the tokenizer's own: without the options it happened to be loaded with."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if any(key in config for key in LOAD_ONLY_KEYS):
        kept = {k: v for k, v in config.items() if k not in LOAD_ONLY_KEYS}
        path.write_text(json.dumps(kept, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def load_training_state(folder: str | Path, tensors: bool = True) -> dict:
    """The training state saved next to a checkpoint's weights (safetensors + JSON; never unpickled).

    ``tensors=False`` reads only its settings and counters (no optimiser state).
    """
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise GrowError(f"{folder} has no {STATE_FILE}; it is not a growkit checkpoint")
    return load_state(path, tensors)
