"""The newer decoders (Mistral, Qwen2, Qwen3, Phi-3, Gemma 2) from a user's side: folders in, folders out.

Each family's tiny model, written by Hugging Face's own ``save_pretrained``, is
grown x2 in every width and by 2 layers with ``exact`` on the command line; the
grown folder loads with ``AutoModelForCausalLM`` and computes the source's
logits; ``inspect`` and ``train`` read it. The adapters' tensors are checked in
test_arch_roundtrip.py, the operators in test_fixed_ops.py, test_zero_width.py,
test_ligo.py and test_mango.py.
"""
from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, perturb_norms
from transformers import AutoModelForCausalLM

from growkit import grow
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_config, tiny_model
from growkit.cli import main
from growkit.data import embedded_text
from growkit.fit import FitConfig

VOCAB = 512


@pytest.mark.parametrize("family", DECODERS)
def test_grow_inspect_and_train_a_saved_folder(family, tmp_path, capsys):
    source = tiny_model(family, vocab_size=VOCAB, tie_word_embeddings=family in ("qwen3", "gemma2"))
    perturb_norms(source)
    source.save_pretrained(tmp_path / "small")
    (tmp_path / "text.txt").write_text(embedded_text(20_000), encoding="utf-8")
    grown = tmp_path / "grown"
    assert main(["grow", str(tmp_path / "small"), str(grown), "--method", "exact", "--hidden", "64",
                 "--layers", "4"]) == 0
    big = AutoModelForCausalLM.from_pretrained(grown).eval()
    assert type(big) is type(source)
    config = big.config
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (64, 8, 4)
    assert (config.intermediate_size, config.num_hidden_layers) == (128, 4)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (big(input_ids=ids).logits - source(input_ids=ids).logits).abs().max() <= 1e-4
    capsys.readouterr()
    assert main(["inspect", str(grown)]) == 0
    out = capsys.readouterr().out
    assert family in out and f"{sum(p.numel() for p in big.parameters()):,}" in out
    assert main(["train", str(grown), "--out", str(tmp_path / "run"), "--steps", "2", "--eval-every", "2",
                 "--checkpoint-every", "0", "--data", str(tmp_path / "text.txt"), "--seq-len", "16",
                 "--batch-size", "2", "--no-progress"]) == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_depth_growth_keeps_a_uniform_layer_pattern_and_stacks_a_mixed_one():
    config = tiny_config("qwen2")
    adapter = adapter_for(config)
    assert adapter.target_config(config, {"num_hidden_layers": 5}).layer_types == ["full_attention"] * 5
    mixed = tiny_config("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert mixed.layer_types == ["full_attention", "sliding_attention"]
    assert adapter.target_config(mixed, {"num_hidden_layers": 3}).layer_types == [*mixed.layer_types, "full_attention"]


@pytest.mark.parametrize("method,types", [
    ("exact", ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]),  # 0 0 1 1
    ("stackbert", ["sliding_attention", "full_attention"] * 2),  # 0 1 0 1
])
def test_a_copied_layer_keeps_its_attention_type(method, types):
    """Gemma 2 alternates sliding (window 4 here) and global layers: each copy keeps its source layer's type."""
    source = tiny_model("gemma2")
    perturb_norms(source)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    grown = grow(source, {"hidden_size": 64, "num_hidden_layers": 4}, method)
    assert grown.config.layer_types == types
    if method == "exact":
        with torch.no_grad():
            reference = source(input_ids=ids).logits
            assert (grown(input_ids=ids).logits - reference).abs().max() <= 1e-4
            grown.config.layer_types = ["sliding_attention", "full_attention"] * 2  # the published alternation
            rebuilt = type(grown)(grown.config).eval()
            rebuilt.load_state_dict(grown.state_dict())
            assert (rebuilt(input_ids=ids).logits - reference).abs().max() > 1e-2  # the span matters


def test_gemma_keeps_the_function_through_its_embedding_scale_and_unit_offset_norms():
    """Zero-extension 32 -> 48: the embedding is rescaled by sqrt(32/48), the tied head's final gain back."""
    source = tiny_model("gemma2")
    perturb_norms(source)
    grown = grow(source, {"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 3,
                          "intermediate_size": 96}, "exact")
    ratio = (32 / 48) ** 0.5
    torch.testing.assert_close(grown.model.embed_tokens.weight[:, :32], source.model.embed_tokens.weight * ratio)
    assert grown.model.embed_tokens.weight[:, 32:].abs().max() == 0
    final = 1 + grown.model.norm.weight[:32]  # zero-extension's sqrt(c), undone for the tied head's smaller E
    torch.testing.assert_close(final, 1 + source.model.norm.weight)
    post = 1 + grown.model.layers[0].post_attention_layernorm.weight[:32]
    torch.testing.assert_close(post, (1 + source.model.layers[0].post_attention_layernorm.weight) * ratio)


@pytest.mark.parametrize("method", ["ligo", "mango"])
def test_a_learned_start_gives_each_layer_the_type_of_the_layer_it_starts_from(method):
    """A learned operator started from ``exact`` (identity layers in place) is exact on Gemma 2 too."""
    source = tiny_model("gemma2")
    perturb_norms(source)
    ids = torch.randint(4, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    options = {"noise": 0.0} if method == "mango" else {}
    grown = grow(source, {"hidden_size": 64, "num_hidden_layers": 4}, method, init="exact",
                 data=[{"input_ids": ids, "labels": ids}], fit_config=FitConfig(steps=0, progress=False), **options)
    assert grown.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]
    with torch.no_grad():
        assert (grown(input_ids=ids).logits - source(input_ids=ids).logits).abs().max() <= 1e-4
