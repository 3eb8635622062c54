"""Shared fixtures: tiny models of every family and inputs they accept."""
from __future__ import annotations

import pytest
import torch

FAMILIES = ("gpt2", "bert", "vit", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2")
#: the decoders added after Llama: Llama-like, each with its own quirk
DECODERS = ("mistral", "qwen2", "qwen3", "phi3", "gemma2")


def model_inputs(model, batch: int = 2, seq: int = 10, seed: int = 0) -> dict:
    """A deterministic forward input for ``model``."""
    gen = torch.Generator().manual_seed(seed)
    config = model.config
    if config.model_type == "vit":
        shape = (batch, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": torch.randn(shape, generator=gen)}
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    return {"input_ids": ids}


def logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def perturb_norms(model, scale: float = 0.3, seed: int = 1) -> None:
    """Give norms non-trivial weights so tests don't pass only because LN starts as the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or ".ln_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: tiny models gain nothing from a second, lose a lot when processes share
    the cores, and bit-exact comparisons need the same kernels in every run (subprocesses included)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

