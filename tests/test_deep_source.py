"""The deep-source test bed in small: which starts keep what a trained deep Llama knows.

A deep GQA Llama (8 layers, 6/2 heads, tied embeddings) is trained briefly on a
synthetic language (each token is followed by one of three), so that it computes
something a bad start can destroy, then grown by x1.5 in every width and 8 -> 10
layers (benchmarks/deep_source.py is the full-size bed).
"""
from __future__ import annotations

import pytest
import torch

import growkit
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_model
from growkit.fit import FitConfig
from growkit.ops import grow_fixed
from growkit.ops.ligo import build as build_ligo
from growkit.ops.mango import MangoOperator

DEEP = dict(num_hidden_layers=8, hidden_size=24, num_attention_heads=6, num_key_value_heads=2, head_dim=4,
            intermediate_size=48, tie_word_embeddings=True, vocab_size=64, max_position_embeddings=32)
GROW = {"num_hidden_layers": 10, "hidden_size": 36, "num_attention_heads": 9, "intermediate_size": 72}


def _language_batch(gen: torch.Generator, successors: torch.Tensor, rows: int = 16, seq: int = 24) -> dict:
    ids = torch.zeros(rows, seq, dtype=torch.long)
    ids[:, 0] = torch.randint(0, len(successors), (rows,), generator=gen)
    for t in range(1, seq):
        ids[:, t] = successors[ids[:, t - 1], torch.randint(0, successors.shape[1], (rows,), generator=gen)]
    return {"input_ids": ids, "labels": ids}


@pytest.fixture(scope="module")
def bed():
    """The trained source, its held-out batch and loss, and the target config."""
    model = tiny_model("llama", **DEEP)
    gen = torch.Generator().manual_seed(0)
    successors = torch.randint(0, DEEP["vocab_size"], (DEEP["vocab_size"], 3), generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        model(**_language_batch(gen, successors)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    held_out = _language_batch(gen, successors, rows=32)
    config = adapter_for(model).target_config(model.config, GROW)
    return model, held_out, _loss(model, held_out), config


def _loss(model, batch: dict) -> float:
    with torch.no_grad():
        return model(**batch).loss.item()


def _start_loss(bed, method: str) -> float:
    model, held_out, _, config = bed
    adapter = adapter_for(model)
    src, tgt = adapter.to_canonical(model), adapter.dims(config)
    starts = {
        "net2net": lambda: grow_fixed(src, tgt, "net2net", "identity"),
        "exact": lambda: grow_fixed(src, tgt, "zero", "identity"),
        "stackbert": lambda: grow_fixed(src, tgt, "net2net", "stack"),
        "mango+init=net2net+split=even": lambda: MangoOperator(src, tgt, init="net2net", split="even").materialize(),
        "mango+init=stackbert": lambda: MangoOperator(src, tgt, init="stackbert").materialize(),
        "mango": lambda: MangoOperator(src, tgt).materialize(),
        "ligo+init=net2net": lambda: build_ligo(src, tgt, init="net2net").materialize(),
        "ligo": lambda: build_ligo(src, tgt).materialize(),
    }
    return _loss(adapter.from_canonical(starts[method](), config, type(model)).eval(), held_out)


def test_the_source_learned_its_language(bed):
    assert bed[2] < 2.5  # uniform over 64 tokens is 4.16; the language's own entropy is ln 3 = 1.10


@pytest.mark.parametrize("method", ["net2net", "mango", "mango+init=net2net+split=even", "ligo+init=net2net"])
def test_net2net_width_with_identity_layers_keeps_the_deep_source(bed, method):
    assert abs(_start_loss(bed, method) - bed[2]) < 0.01


def test_zero_extended_exact_keeps_the_deep_source_exactly(bed):
    assert abs(_start_loss(bed, "exact") - bed[2]) < 1e-5


@pytest.mark.parametrize("method", ["stackbert", "mango+init=stackbert", "ligo"])
def test_stacked_layers_lose_what_the_deep_source_knows(bed, method):
    assert _start_loss(bed, method) - bed[2] > 0.03


def test_the_default_mango_fit_does_not_make_the_deep_source_worse(bed):
    """Identity insertion keeps the source; the fit's held-out check keeps the best operator, the start included."""
    model, held_out, source_loss, config = bed
    successors_gen = torch.Generator().manual_seed(0)
    successors = torch.randint(0, DEEP["vocab_size"], (DEEP["vocab_size"], 3), generator=successors_gen)
    gen = torch.Generator().manual_seed(7)
    data = [_language_batch(gen, successors) for _ in range(34)]
    grown, result = growkit.grow(model, config, method="mango", data=data, return_fit=True,
                                 fit_config=FitConfig(steps=30, progress=False))
    start = dict(result.held_out)[0]
    assert result.held_out[0][0] == 0 and min(loss for _, loss in result.held_out) <= start
    assert _loss(grown.eval(), held_out) < source_loss + 0.01
