"""Where growkit computes, and in which precision.

One policy for every loop (training, the operator's fit, the benchmark):

- **CPU**: fp32 everywhere, no autocast. bf16 matmuls are about 100x slower
  than fp32 on the CPUs growkit was measured on, and the function-preservation
  and resume tests compare results bit for bit.
- **CUDA**: bf16 autocast around the model's forward (Accelerate's
  ``mixed_precision="bf16"`` in training; :func:`autocast_context` around the
  target's forward in a fit), fp32 master weights and optimiser state, and
  SDPA attention. On a GPU without bf16 (before Ampere) it stays fp32.
- **Growth operators always compute in fp32**: :class:`~growkit.ops.operator.GrowthOperator`
  runs its forward inside :func:`fp32_region`, so the Mango/LiGO contraction
  that materialises the target's weights is never done in bf16, even when it
  is called inside an autocast region (the weights it produces are fp32; the
  target's forward then casts them as autocast decides).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager, Iterator

import torch

from .core.catalog import DEVICES, PRECISIONS
from .core.errors import GrowError


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """The device ``name`` means here: ``cpu``; ``cuda`` (or ``cuda:N``); ``auto`` = CUDA when there is one, else CPU.

    Under a multi-process launch (``LOCAL_RANK`` set) a plain ``cuda`` means this
    process's own GPU, ``cuda:LOCAL_RANK``. Asking for CUDA where there is none
    is a :class:`GrowError`, not a silent fall-back to the CPU.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise GrowError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    text = name.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        text = "cuda" if _cuda_available() else "cpu"
        if text == "cpu":
            return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not _cuda_available():
            built = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise GrowError(f"device {name!r} asks for a GPU but {built}; use --device cpu (or auto)")
        if text == "cuda":
            local = os.environ.get("LOCAL_RANK")
            return torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())
        try:
            device = torch.device(text)
        except RuntimeError:
            raise GrowError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GrowError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) are visible")
        return device
    raise GrowError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")


@dataclass(frozen=True)
class Precision:
    """The dtype policy of one device type."""

    device_type: str  #: "cpu" or "cuda"
    autocast: bool  #: whether the model's forward runs under autocast
    dtype: torch.dtype  #: the autocast compute dtype (fp32 when ``autocast`` is off)
    mixed_precision: str  #: Accelerate's setting: "no" or "bf16"


def precision(device: str | torch.device) -> Precision:
    """The dtype policy for ``device`` (a device or a device type such as ``"cuda"``; nothing is allocated).

    CPU: fp32, no autocast. CUDA: bf16 autocast, unless a visible GPU lacks bf16
    (then fp32). The answer for ``"cuda"`` on a machine without a GPU is the
    policy a bf16-capable GPU would get.
    """
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0].lower()
    if kind == "cuda":
        bf16 = not _cuda_available() or torch.cuda.is_bf16_supported()
        if bf16:
            return Precision("cuda", True, torch.bfloat16, "bf16")
        return Precision("cuda", False, torch.float32, "no")
    return Precision(kind, False, torch.float32, "no")


def training_precision(device: torch.device, requested: str = "auto") -> Precision:
    """:func:`precision`'s policy, or the one ``requested`` (``fp32``, ``bf16``) where ``device`` supports it.

    bf16 is refused on the CPU (its matmuls are about 100x slower than fp32
    there) and on a GPU without bf16; fp32 is always possible.
    """
    if requested not in PRECISIONS:
        raise GrowError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    policy = precision(device)
    if requested == "auto" or requested == ("bf16" if policy.autocast else "fp32"):
        return policy
    if requested == "fp32":
        return Precision(policy.device_type, False, torch.float32, "no")
    if policy.device_type != "cuda":
        raise GrowError("bf16 needs a CUDA GPU: on the CPU growkit trains in fp32 (bf16 matmuls are about 100x "
                        "slower there); use --precision fp32 or --device cuda")
    raise GrowError("this GPU has no bf16 support; use --precision fp32")


def autocast_context(device: str | torch.device) -> ContextManager:
    """Autocast for a model's forward on ``device`` under :func:`precision`'s policy (a no-op on CPU)."""
    policy = precision(device)
    if not policy.autocast:
        return contextlib.nullcontext()
    return torch.autocast(policy.device_type, dtype=policy.dtype)


@contextlib.contextmanager
def fp32_region() -> Iterator[None]:
    """Turn off every active autocast (CPU and CUDA alike), so the code inside computes in its inputs' dtype."""
    with contextlib.ExitStack() as stack:
        for kind in ("cpu", "cuda"):
            try:
                enabled = torch.is_autocast_enabled(kind)
            except (RuntimeError, TypeError):  # pragma: no cover - a torch without this device type
                continue
            if enabled:
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def attn_implementation(device: str | torch.device) -> str | None:
    """The attention kernel for ``device``: ``"sdpa"`` on CUDA; None on CPU (keep the model's own, sdpa in transformers 5)."""
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0].lower()
    return "sdpa" if kind == "cuda" else None


def use_attention(model: torch.nn.Module, device: str | torch.device) -> None:
    """Switch ``model`` to :func:`attn_implementation`'s kernel for ``device`` where it differs (in place)."""
    wanted = attn_implementation(device)
    config = getattr(model, "config", None)
    if wanted is None or config is None or getattr(config, "_attn_implementation", None) == wanted:
        return
    try:
        model.set_attn_implementation(wanted)
    except (ValueError, ImportError, AttributeError):  # a model without SDPA support keeps its own kernel
        pass
