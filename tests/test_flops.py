"""FLOPs: the analytic count agrees with PyTorch's counter on a real training step, for every family."""
from __future__ import annotations

import pytest
import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM, ViTForImageClassification

from growkit.arch.tiny import tiny_config
from growkit.core.errors import GrowError
from growkit.estimate import parameter_count
from growkit.flops import (
    batch_tokens,
    flops_per_batch,
    forward_flops_per_token,
    measure_flops,
    train_flops_per_token,
)

B, S, V = 2, 64, 512
# hidden 128 so that matmuls dominate; Llama uses grouped-query attention (4 query heads, 2 kv heads)
CASES = {
    "gpt2": (GPT2LMHeadModel, dict(n_embd=128, n_head=4, vocab_size=V, n_positions=S)),
    "bert": (BertForMaskedLM, dict(hidden_size=128, num_attention_heads=4, intermediate_size=512, vocab_size=V, max_position_embeddings=S)),
    "llama": (LlamaForCausalLM, dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=344, vocab_size=V, max_position_embeddings=S)),
    "vit": (ViTForImageClassification, dict(hidden_size=128, num_attention_heads=4, intermediate_size=512, image_size=32, patch_size=4)),
}


def _case(family):
    cls, overrides = CASES[family]
    config = tiny_config(family, **overrides)
    torch.manual_seed(0)
    if family == "vit":
        batch = {"pixel_values": torch.randn(B, 1, 32, 32), "labels": torch.randint(10, (B,))}
    else:
        ids = torch.randint(5, V, (B, S))
        batch = {"input_ids": ids, "labels": ids}
    return cls(config), config, batch


@pytest.mark.parametrize("family", list(CASES))
def test_analytic_matches_measured(family):
    model, config, batch = _case(family)
    measured = measure_flops(model, batch)
    analytic = flops_per_batch(config, batch)
    assert abs(measured / analytic - 1) < 0.10, (measured, analytic)
    forward = measure_flops(model, batch, backward=False)
    assert abs(forward / (analytic / 3) - 1) < 0.10
    assert all(p.grad is None for p in model.parameters())  # measuring leaves no gradients behind


def test_per_token_and_per_batch_agree():
    model, config, batch = _case("gpt2")
    assert train_flops_per_token(config, S) == 3 * forward_flops_per_token(config, S)
    assert flops_per_batch(config, batch) == train_flops_per_token(config, S) * B * S
    # the dominant term: 6 x (non-embedding matmul weights + LM head) per token, plus attention
    d, layers = 128, 2
    expected = 6 * (layers * 12 * d * d + d * V) + 3 * 4 * layers * S * d
    assert train_flops_per_token(config, S) == expected


def test_vit_tokens_include_cls():
    _, config, batch = _case("vit")
    assert batch_tokens(config, batch) == B * ((32 // 4) ** 2 + 1)
    assert train_flops_per_token(config) == train_flops_per_token(config, 999)  # ViT ignores seq_len


def test_text_needs_seq_len():
    with pytest.raises(GrowError, match="pass seq_len"):
        train_flops_per_token(tiny_config("gpt2"))


@pytest.mark.parametrize("family", list(CASES))
def test_parameter_count(family):
    model, config, _ = _case(family)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())
