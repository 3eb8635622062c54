"""Adapters between Hugging Face families and the canonical view, looked up by ``model_type``."""
from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedModel

from ..core.errors import GrowError
from .base import Adapter, Entry
from .bert import BertAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter
from .vit import ViTAdapter

ADAPTERS: dict[str, Adapter] = {a.model_type: a for a in (GPT2Adapter(), BertAdapter(), ViTAdapter(), LlamaAdapter())}

#: the HF classes each family supports, by class name
SUPPORTED_CLASSES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Model"),
    "bert": ("BertForMaskedLM", "BertModel"),
    "vit": ("ViTForImageClassification", "ViTModel"),
    "llama": ("LlamaForCausalLM", "LlamaModel"),
}


def adapter_for(obj: PreTrainedModel | PretrainedConfig) -> Adapter:
    """The adapter for a model or config, or a clear error naming what is supported."""
    config = obj if isinstance(obj, PretrainedConfig) else getattr(obj, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise GrowError(
            f"unsupported model type {model_type!r}; growkit supports {', '.join(sorted(ADAPTERS))}"
        )
    if isinstance(obj, PreTrainedModel) and type(obj).__name__ not in SUPPORTED_CLASSES[model_type]:
        raise GrowError(
            f"unsupported class {type(obj).__name__}; for {model_type} growkit supports "
            + ", ".join(SUPPORTED_CLASSES[model_type])
        )
    return ADAPTERS[model_type]


__all__ = ["ADAPTERS", "Adapter", "Entry", "SUPPORTED_CLASSES", "adapter_for"]
