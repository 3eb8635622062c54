"""Adapters between Hugging Face families and the canonical view, looked up by ``model_type``.

Adding a family is one adapter module plus one line in ``ADAPTERS`` below
(or a :func:`register_adapter` call); see :class:`Adapter` for the facts it states.
"""
from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedModel

from ..core.errors import GrowError
from ..core.registry import register_once
from .base import CAUSAL, IMAGE, MASKED, Adapter, Entry
from .bert import BertAdapter
from .gemma2 import Gemma2Adapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter
from .mistral import MistralAdapter
from .phi3 import Phi3Adapter
from .qwen2 import Qwen2Adapter
from .qwen3 import Qwen3Adapter
from .vit import ViTAdapter

#: every supported family, by HF ``model_type``
ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Make ``adapter``'s family known to every command (refused when its model type is taken)."""
    return register_once(ADAPTERS, adapter.model_type, adapter, "model type")


for _adapter in (GPT2Adapter(), BertAdapter(), ViTAdapter(), LlamaAdapter(), MistralAdapter(), Qwen2Adapter(),
                 Qwen3Adapter(), Phi3Adapter(), Gemma2Adapter()):
    register_adapter(_adapter)


def supported() -> str:
    """The supported model types, for messages."""
    return ", ".join(sorted(ADAPTERS))


def family_adapter(family: str) -> Adapter:
    """The adapter of the family named ``family`` (as the canonical view and the benchmark name it)."""
    for adapter in ADAPTERS.values():
        if adapter.family == family:
            return adapter
    raise GrowError(f"unknown family {family!r}; choose one of {', '.join(a.family for a in ADAPTERS.values())}")


def adapter_for(obj: PreTrainedModel | PretrainedConfig) -> Adapter:
    """The adapter for a model or config, or a clear error naming what is supported."""
    config = obj if isinstance(obj, PretrainedConfig) else getattr(obj, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise GrowError(f"unsupported model type {model_type!r}; growkit supports {supported()}")
    adapter = ADAPTERS[model_type]
    if isinstance(obj, PreTrainedModel) and type(obj).__name__ not in adapter.class_names:
        raise GrowError(
            f"unsupported class {type(obj).__name__}; for {model_type} growkit supports " + ", ".join(adapter.class_names)
        )
    return adapter


def predicts_next_token(model: object) -> bool:
    """Whether ``model``'s loss predicts the next token (its labels are shifted inside the model)."""
    model_type = getattr(getattr(model, "config", model), "model_type", None)
    return model_type in ADAPTERS and ADAPTERS[model_type].objective == CAUSAL


__all__ = ["ADAPTERS", "Adapter", "CAUSAL", "Entry", "IMAGE", "MASKED", "adapter_for", "family_adapter",
           "predicts_next_token", "register_adapter", "supported"]
