"""FLOP accounting: an analytic count per training token, and a measured count to check it.

The savings benchmark compares methods by compute, so it needs a number that is
cheap (every step) and trustworthy. The analytic count is the usual one:
forward = 2 x (matmul weights touched per token) + the attention scores and
values (2 x 2 x layers x seq x heads*head_dim, the full square, as the kernels
compute it); training = 3 x forward (backward costs twice the forward).
Embedding lookups, norms, activations and softmax are left out: they are not
matmuls and are small next to them. :func:`measure_flops` counts the matmuls
that a real step runs, with PyTorch's ``FlopCounterMode``, to check the formula.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils import flop_counter
from transformers import PretrainedConfig, PreTrainedModel

from .arch import adapter_for
from .core.errors import GrowError


# PyTorch's counter misses the fused CPU attention kernel that SDPA picks when there
# is no mask (Llama, ViT); count it with the formulas PyTorch uses for the GPU kernels.
def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def seq_len_of(config: PretrainedConfig, batch: dict[str, torch.Tensor]) -> int:
    """Positions per example: the text length, or what the family makes of an image (ViT: patches + CLS)."""
    text = batch["input_ids"].shape[-1] if "input_ids" in batch else None
    return adapter_for(config).positions(config, text)


def batch_tokens(config: PretrainedConfig, batch: dict[str, torch.Tensor]) -> int:
    """Token positions in a batch (ViT: images x (patches + 1)); the unit of tokens/s."""
    first = batch["pixel_values"] if "pixel_values" in batch else batch["input_ids"]
    return first.shape[0] * seq_len_of(config, batch)


def forward_flops_per_token(config: PretrainedConfig, seq_len: int | None = None, *, head: bool = True) -> float:
    """Forward matmul FLOPs per token position; ``seq_len`` is ignored where the config fixes it (ViT)."""
    adapter = adapter_for(config)
    d = adapter.dims(config)
    seq_len = adapter.positions(config, seq_len)
    if seq_len is None:
        raise GrowError(f"{adapter.family} FLOPs depend on the sequence length; pass seq_len")
    q, k = d.heads * d.head_dim, d.kv_heads * d.head_dim
    mlp_inputs = 2 if adapter.gated_mlp else 1  # SwiGLU has gate and up projections
    per_layer = 2 * (d.hidden * q + 2 * d.hidden * k + q * d.hidden + (mlp_inputs + 1) * d.hidden * d.ffn)
    attention = 2 * 2 * seq_len * q
    total = d.layers * (per_layer + attention) + adapter.edge_flops_per_token(config, d, seq_len, head)
    return float(total)


def train_flops_per_token(config: PretrainedConfig, seq_len: int | None = None, *, head: bool = True) -> float:
    """Training FLOPs (forward + backward = 3 x forward) per token position."""
    return 3.0 * forward_flops_per_token(config, seq_len, head=head)


def flops_per_batch(config: PretrainedConfig, batch: dict[str, torch.Tensor]) -> float:
    """Training FLOPs of one step on ``batch`` (what the training loop accumulates)."""
    return train_flops_per_token(config, seq_len_of(config, batch)) * batch_tokens(config, batch)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs that PyTorch's counter sees while ``fn()`` runs (e.g. a fit step with its backward)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        fn()
    return float(counter.get_total_flops())


def measure_flops(model: PreTrainedModel, batch: dict[str, torch.Tensor], backward: bool = True) -> float:
    """Measured FLOPs of one forward (and backward) step; gradients are computed but not stored in ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        loss = model(**batch).loss
        if backward:
            torch.autograd.grad(loss, params, allow_unused=True)

    return count_flops(step)

