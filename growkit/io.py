"""Loading and saving model folders, safely: local files only, safetensors only, atomic writes.

Every command that reads or writes a ``save_pretrained`` folder goes through
here, so each refusal (no folder, no config, an unsupported class, pickle-only
weights, a corrupt file) is one clear :class:`GrowError`, and a crash mid-save
never leaves a half-written model where a good one was.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from .arch import SUPPORTED_CLASSES
from .core.errors import GrowError

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
STATE_FILE = "training_state.pt"


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
    family = config.model_type
    if family not in SUPPORTED_CLASSES:
        raise GrowError(f"unsupported model type {family!r}; growkit supports {', '.join(sorted(SUPPORTED_CLASSES))}")
    names = getattr(config, "architectures", None) or [SUPPORTED_CLASSES[family][0]]
    if names[0] not in SUPPORTED_CLASSES[family]:
        raise GrowError(f"unsupported class {names[0]}; for {family} growkit supports {', '.join(SUPPORTED_CLASSES[family])}")
    return getattr(transformers, names[0])


def load_config(folder: str | Path) -> PretrainedConfig:
    """The config of a model folder; the model type is checked before transformers parses it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GrowError(f"model folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise GrowError(f"{folder} has no config.json; is it a folder written by save_pretrained?")
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError) as err:
        raise GrowError(f"{path} is not valid JSON: {err}") from None
    if model_type not in SUPPORTED_CLASSES:
        raise GrowError(f"unsupported model type {model_type!r} in {path}; growkit supports {', '.join(sorted(SUPPORTED_CLASSES))}")
    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def load_pretrained(folder: str | Path) -> PreTrainedModel:
    """The model saved in ``folder``, in fp32 and eval mode, from its safetensors weights only."""
    folder = Path(folder)
    config = load_config(folder)
    cls = model_class(config)
    if not any((folder / name).is_file() for name in SAFETENSORS):
        if any((folder / name).is_file() for name in PICKLED):
            raise GrowError(
                f"{folder} holds only pickled weights (pytorch_model.bin), which growkit does not load because "
                "unpickling can run code; convert them to model.safetensors (load once with transformers and "
                "save_pretrained again)"
            )
        raise GrowError(f"{folder} has no model.safetensors")
    try:
        with _quiet():
            model, info = cls.from_pretrained(
                str(folder), config=config, local_files_only=True, use_safetensors=True,
                dtype=torch.float32, output_loading_info=True,
            )
    except Exception as err:  # safetensors and transformers raise many types for a bad file
        raise GrowError(f"cannot load the weights in {folder}: {type(err).__name__}: {err}") from None
    broken = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if broken:
        raise GrowError(f"{folder}: the weights do not fit {cls.__name__}: missing or mis-shaped {broken[:5]}")
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
) -> Path:
    """Write ``model`` (safetensors), its tokenizer, an optional training ``state`` and copies of
    ``extra_files`` (e.g. a preprocessor config) to ``folder``.

    A non-empty ``folder`` is refused unless ``overwrite``. Files are written to a
    hidden sibling folder first and renamed into place, so ``folder`` holds either
    the old model or the complete new one.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GrowError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise GrowError(f"{folder} exists and is not empty; choose another folder or pass overwrite")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet():
            model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        for path in extra_files:
            shutil.copy2(path, tmp / Path(path).name)
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
