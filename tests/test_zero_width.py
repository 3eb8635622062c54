"""Exact growth to any width for RMSNorm models (zero-extension): exactness in fp64, structure, refusals, training."""
from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, logits, model_inputs, perturb_norms
from transformers.models.llama import modeling_llama

import growkit
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_config, tiny_model
from growkit.cli import main
from growkit.core.errors import GrowError
from growkit.io import save_pretrained

SOURCE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=176,
              num_hidden_layers=4)
X15 = {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3, "intermediate_size": 264,
       "num_hidden_layers": 6}
#: name -> (source overrides, target sizes)
GROWTHS = {
    "x1.5 (GQA 4/2 -> 6/3)": ({}, X15),
    "x1.5, groups 2 -> 3 (GQA 4/2 -> 6/2)": ({}, {**X15, "num_key_value_heads": 2, "intermediate_size": 200}),
    "x1.5, no GQA (4/4 -> 6/6)": ({"num_key_value_heads": 4}, {**X15, "num_key_value_heads": 6}),
    "x2 (integer)": ({}, {"hidden_size": 128, "num_attention_heads": 8, "num_key_value_heads": 4,
                          "intermediate_size": 352, "num_hidden_layers": 6}),
}
#: identity insertion 4 -> 6 layers: the target layers that are the source's (the others are silenced copies)
KEPT = [0, 2, 3, 5]


def _source(seed: int = 0, family: str = "llama", **overrides):
    fields = {**SOURCE, **overrides}
    if adapter_for(tiny_config(family)).head_dim_from_hidden:
        del fields["head_dim"]  # Phi-3: hidden / heads, 16 here too
    model = tiny_model(family, seed=seed, **fields)
    perturb_norms(model)
    return model.eval()


def _rms_norm_at_input_precision(self, hidden):
    """HF's RMSNorm formula without its cast to fp32 (which caps an fp64 comparison at ~1e-7)."""
    return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@pytest.fixture
def fp64(monkeypatch):
    """Models built in fp64, with RMSNorm computed in fp64 too; the only other fp32 step, RoPE's angles,
    is the same in source and target (head_dim is kept)."""
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rms_norm_at_input_precision)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("growth", list(GROWTHS))
def test_zero_extension_is_exact_in_fp64_also_after_save_and_load(fp64, growth, tied, tmp_path):
    overrides, sizes = GROWTHS[growth]
    src = _source(tie_word_embeddings=tied, **overrides)
    assert next(src.parameters()).dtype == torch.float64
    inputs = model_inputs(src)
    width = None if growth != "x2 (integer)" else "zero"  # exact tiles integer factors unless told
    big = growkit.grow(src, sizes, method="exact", width=width, seed=2)
    assert big.config.hidden_size == sizes["hidden_size"] and next(big.parameters()).dtype == torch.float64
    ratio = src.config.hidden_size / big.config.hidden_size
    assert big.config.rms_norm_eps == pytest.approx(src.config.rms_norm_eps * ratio, rel=1e-12)
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-10
    big.save_pretrained(tmp_path)
    loaded = type(big).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert loaded.config.rms_norm_eps == big.config.rms_norm_eps
    assert (logits(loaded, inputs) - logits(src, inputs)).abs().max() <= 1e-10


def test_the_eps_rescaling_is_needed(fp64):
    """With the gains rescaled but eps kept, the old dimensions are normalised slightly differently."""
    src = _source(rms_norm_eps=1e-3)
    big = growkit.grow(src, X15, method="exact")
    inputs = model_inputs(src)
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-10
    for module in big.modules():
        if isinstance(module, modeling_llama.LlamaRMSNorm):
            module.variance_epsilon = src.config.rms_norm_eps
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() > 1e-6


@pytest.mark.parametrize("family", ["llama", *DECODERS])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_non_integer_exact_keeps_fp32_logits_within_1e_4_also_after_save_and_load(tied, family, tmp_path):
    src = _source(family=family, tie_word_embeddings=tied)
    inputs = model_inputs(src)
    big = growkit.grow(src, X15, method="exact")
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-4
    big.save_pretrained(tmp_path)
    loaded = type(big).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(loaded, inputs), logits(big, inputs), rtol=0, atol=1e-6)


def test_new_dimensions_heads_and_units_write_zero_and_norms_are_rescaled():
    src = _source(tie_word_embeddings=True)
    big = growkit.grow(src, X15, method="exact", seed=1)
    canon, old = adapter_for(big).to_canonical(big), adapter_for(src).to_canonical(src)
    d, f, heads = SOURCE["hidden_size"], SOURCE["intermediate_size"], big.config.num_attention_heads
    assert torch.count_nonzero(canon.tensors["tok_emb"][:, d:]) == 0
    for name in ("layer.o", "layer.mlp_out"):
        assert torch.count_nonzero(canon.tensors[name][..., d:]) == 0
    assert torch.count_nonzero(canon.tensors["layer.mlp_out"][:, f:]) == 0
    o_rows = canon.tensors["layer.o"].unflatten(1, (heads, 16))
    assert torch.count_nonzero(o_rows[:, 4:]) == 0  # heads 4, 5: the new kv head's group (group size 2 kept)
    assert torch.equal(o_rows[KEPT, :4, :, :d].flatten(1, 2), old.tensors["layer.o"])
    scale = (d / big.config.hidden_size) ** 0.5
    for name in ("layer.norm1", "layer.norm2", "final_norm"):
        grown = canon.tensors[name][KEPT] if name.startswith("layer.") else canon.tensors[name]
        torch.testing.assert_close(grown[..., :d], old.tensors[name] * scale, rtol=1e-6, atol=0)
    # the new dimensions' readers and the new units' inputs are fresh random weights, not zeros or copies
    assert canon.tensors["layer.q"][:, d:].std() > 0.5 * old.tensors["layer.q"].std()
    assert canon.tensors["layer.mlp_gate"][:, :d, f:].std() > 0.5 * old.tensors["layer.mlp_gate"].std()
    assert torch.equal(canon.tensors["layer.mlp_gate"][KEPT, :d, :f], old.tensors["layer.mlp_gate"])


def test_exact_tiles_integer_factors_and_zero_extends_the_others():
    src = _source()
    double = {"hidden_size": 128, "num_hidden_layers": 6}
    tiled = growkit.grow(src, double, method="exact", seed=4).state_dict()
    explicit = growkit.grow(src, double, method="exact", width="tile", seed=4).state_dict()
    assert all(torch.equal(tiled[k], explicit[k]) for k in tiled)
    zero = growkit.grow(src, X15, method="exact", seed=4).state_dict()
    explicit = growkit.grow(src, X15, method="stackbert", width="zero", depth="identity", seed=4).state_dict()
    assert all(torch.equal(zero[k], explicit[k]) for k in zero)


def _no_work(*args, **kwargs):
    raise AssertionError("the weights were read before the refusal")


@pytest.mark.parametrize("family", ["gpt2", "bert", "vit"])
def test_layer_norm_models_are_refused_non_integer_exact_before_any_work(family, monkeypatch):
    src = tiny_model(family)
    monkeypatch.setattr(type(adapter_for(src)), "to_canonical", _no_work)
    with pytest.raises(GrowError, match=r"integer growth factor.*hidden size 32 -> 48.*LayerNorm.*RMSNorm"):
        growkit.grow(src, {"hidden_size": 48}, method="exact")
    with pytest.raises(GrowError, match="width operator zero: .* uses LayerNorm"):
        growkit.grow(src, {"hidden_size": 64}, method="net2net", width="zero")


def test_a_shrinking_query_group_is_refused_before_any_work(monkeypatch):
    src = _source()
    monkeypatch.setattr(type(adapter_for(src)), "to_canonical", _no_work)
    with pytest.raises(GrowError, match="query heads per kv head would shrink from 2 to 1"):
        growkit.grow(src, {**X15, "num_key_value_heads": 6}, method="exact")


def test_new_parts_leave_zero_and_the_loss_falls_under_training():
    src = _source(tie_word_embeddings=True)
    big = growkit.grow(src, X15, method="exact").train()
    batch = model_inputs(big, batch=4, seq=16)
    optimizer = torch.optim.AdamW(big.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = big(**batch, labels=batch["input_ids"]).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.05
    canon = adapter_for(big).to_canonical(big)
    d, f = SOURCE["hidden_size"], SOURCE["intermediate_size"]
    for name, new in (("tok_emb", (..., slice(d, None))), ("layer.o", (..., slice(d, None))),
                      ("layer.mlp_out", (slice(None), slice(f, None)))):
        assert canon.tensors[name][new].abs().min() > 0, name  # every new entry has moved


def test_cli_grows_a_llama_folder_by_a_non_integer_factor_and_names_the_operator(tmp_path, capsys):
    src = _source()
    save_pretrained(src, tmp_path / "small")
    argv = ["grow", str(tmp_path / "small"), str(tmp_path / "big"), "--hidden", "96", "--layers", "6"]
    assert main([*argv, "--dry-run"]) == 0
    assert "width, depth operators  zero, identity" in capsys.readouterr().out
    assert main(argv) == 0
    assert "width operator zero" in capsys.readouterr().out
    big = type(src).from_pretrained(tmp_path / "big").eval()
    inputs = model_inputs(src)
    assert big.config.num_attention_heads == 6 and big.config.num_key_value_heads == 3
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-4
    assert main(["methods"]) == 0
    assert "width=tile (or zero where a factor is not whole)" in capsys.readouterr().out
