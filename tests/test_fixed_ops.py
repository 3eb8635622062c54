"""Fixed growth operators: exactness, layer maps, symmetry breaking, save/load."""
from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, logits, model_inputs, perturb_norms

import growkit
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_model
from growkit.core.errors import GrowError
from growkit.ops.depth import DepthMap

DOUBLE = {"hidden_size": 64, "num_hidden_layers": 4}


def _source(family: str, **overrides):
    model = tiny_model(family, **overrides)
    perturb_norms(model)
    return model.eval()


@pytest.mark.parametrize(
    "family,overrides",
    [
        ("gpt2", {}),
        ("gpt2", {"tie_word_embeddings": False}),
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True}),
        ("vit", {}),
        *((family, {"tie_word_embeddings": tied}) for family in DECODERS for tied in (False, True)),
    ],
)
def test_exact_preserves_function_width_and_depth(family, overrides):
    src = _source(family, **overrides)
    inputs = model_inputs(src)
    big = growkit.grow(src, DOUBLE, method="exact", seed=3)
    assert big.config.num_hidden_layers == 4 and big.config.hidden_size == 64
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-4


def test_exact_llama_gqa_grows_kv_heads_with_query_groups():
    src = _source("llama")
    assert src.config.num_key_value_heads < src.config.num_attention_heads
    big = growkit.grow(src, DOUBLE, method="exact")
    assert big.config.num_key_value_heads == 2 * src.config.num_key_value_heads
    assert big.config.head_dim == src.config.head_dim
    inputs = model_inputs(src)
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-4


def test_exact_bert_width_is_exact():
    src = _source("bert")
    big = growkit.grow(src, {"hidden_size": 64}, method="exact")
    inputs = model_inputs(src)
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-4


def test_exact_bert_depth_is_documented_post_norm_behaviour():
    """Post-LN BERT has no exact identity layer: new layers are silenced copies, exact only for identity norms."""
    fresh = tiny_model("bert").eval()  # LayerNorms start at gamma=1, beta=0
    inputs = model_inputs(fresh)
    with pytest.warns(UserWarning, match="post-norm"):
        deep = growkit.grow(fresh, {"num_hidden_layers": 4}, method="exact")
    canon = adapter_for(deep).to_canonical(deep)
    silenced = [l for l, s in enumerate(DepthMap.identity(2, 4).silenced) if s]
    for name in ("layer.o", "layer.o_bias", "layer.mlp_out", "layer.mlp_out_bias"):
        assert torch.count_nonzero(canon.tensors[name][silenced]) == 0
    assert (logits(deep, inputs) - logits(fresh, inputs)).abs().max() <= 1e-4
    trained = _source("bert")
    with pytest.warns(UserWarning):
        deep = growkit.grow(trained, {"num_hidden_layers": 4}, method="exact")
    assert (logits(deep, inputs) - logits(trained, inputs)).abs().max() > 1e-3


def test_gpt2_layer_index_attention_scaling_warns_on_depth_growth():
    """With scale_attn_by_inverse_layer_idx a layer's output depends on its index: copies cannot be exact."""
    src = _source("gpt2", scale_attn_by_inverse_layer_idx=True)
    inputs = model_inputs(src)
    with pytest.warns(UserWarning, match="scale_attn_by_inverse_layer_idx"):
        deep = growkit.grow(src, {"num_hidden_layers": 4}, method="exact")
    assert (logits(deep, inputs) - logits(src, inputs)).abs().max() > 1e-4
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        growkit.grow(src, {"hidden_size": 64}, method="exact")  # width only: layer indices unchanged


@pytest.mark.parametrize("method,expected", [("stackbert", [0, 1, 0, 1, 0]), ("interpolate", [0, 0, 0, 1, 1])])
def test_depth_copies_exact_layers(method, expected):
    src = _source("gpt2")
    big = growkit.grow(src, {"num_hidden_layers": 5}, method=method)
    a, b = adapter_for(src).to_canonical(src), adapter_for(big).to_canonical(big)
    for name in a.layer_names():
        for l2, l1 in enumerate(expected):
            assert torch.equal(b.tensors[name][l2], a.tensors[name][l1]), (name, l2)
    for name in a.global_names():
        assert torch.equal(b.tensors[name], a.tensors[name])


@pytest.mark.parametrize(
    "family,sizes",
    [
        ("gpt2", {"intermediate_size": 192}),
        ("bert", {"intermediate_size": 96}),
        ("vit", {"intermediate_size": 96}),
        ("llama", {"intermediate_size": 96, "num_attention_heads": 8, "num_key_value_heads": 4}),
    ],
)
def test_net2net_width_preserves_function_where_the_argument_holds(family, sizes):
    """Net2Net is exact wherever no norm sees the copied units: FFN and heads at fixed hidden size."""
    src = _source(family)
    big = growkit.grow(src, sizes, method="net2net", seed=5)
    inputs = model_inputs(src)
    assert (logits(big, inputs) - logits(src, inputs)).abs().max() <= 1e-4


def test_bert2bert_takes_new_units_from_next_layer():
    src = _source("gpt2")
    big = growkit.grow(src, {"intermediate_size": 192}, method="bert2bert")
    a, b = adapter_for(src).to_canonical(src), adapter_for(big).to_canonical(big)
    new_cols = b.tensors["layer.mlp_in"][0, :, 128:]
    next_layer = a.tensors["layer.mlp_in"][1]
    assert all(any(torch.equal(col, ref) for ref in next_layer.t()) for col in new_cols.t())
    assert torch.equal(b.tensors["layer.mlp_in"][0, :, :128], a.tensors["layer.mlp_in"][0])


@pytest.mark.parametrize("method", ["stackbert", "interpolate", "net2net", "bert2bert", "exact"])
@pytest.mark.parametrize("family", ["gpt2", "llama", *DECODERS])
def test_saved_model_matches_in_memory(method, family, tmp_path):
    src = _source(family, tie_word_embeddings=True)
    big = growkit.grow(src, DOUBLE, method=method)
    big.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = type(big).from_pretrained(tmp_path).eval()
    inputs = model_inputs(src)
    torch.testing.assert_close(logits(loaded, inputs), logits(big, inputs), rtol=0, atol=1e-6)


def test_symmetry_is_broken_after_one_step():
    src = _source("gpt2")
    big = growkit.grow(src, {"hidden_size": 64}, method="exact").train()
    adapter = adapter_for(big)
    emb = adapter.to_canonical(big).tensors["tok_emb"]
    assert torch.equal(emb[:, :32], emb[:, 32:])
    optimizer = torch.optim.AdamW(big.parameters(), lr=1e-2)
    batch = model_inputs(big, batch=4, seq=12)
    big(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    emb = adapter.to_canonical(big).tensors["tok_emb"]
    assert not torch.equal(emb[:, :32], emb[:, 32:])
    ffn = adapter.to_canonical(big).tensors["layer.mlp_in"]
    assert not torch.equal(ffn[:, :, :128], ffn[:, :, 128:])


@pytest.mark.parametrize("method", ["stackbert", "interpolate", "net2net", "bert2bert", "exact"])
def test_same_seed_same_weights(method):
    src = _source("llama")
    a = growkit.grow(src, DOUBLE, method=method, seed=7).state_dict()
    b = growkit.grow(src, DOUBLE, method=method, seed=7).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_width_and_depth_compose_freely():
    src = _source("gpt2")
    a = growkit.grow(src, DOUBLE, method="stackbert", width="tile", depth="identity", seed=1)
    b = growkit.grow(src, DOUBLE, method="exact", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_source_is_not_modified():
    src = _source("gpt2")
    before = {k: v.clone() for k, v in src.state_dict().items()}
    growkit.grow(src, DOUBLE, method="bert2bert")
    assert all(torch.equal(before[k], v) for k, v in src.state_dict().items())


@pytest.mark.parametrize(
    "sizes,message",
    [
        ({"hidden_size": 16}, "smaller"),
        ({"num_hidden_layers": 1}, "smaller"),
        ({"hidden_size": 64, "num_attention_heads": 7}, "does not divide"),
        ({"hidden_size": 48}, "integer growth factor"),
        ({"hidden_size": "big"}, "positive integer"),
        ({"width": 64}, "unknown size"),
    ],
)
def test_bad_targets_are_refused(sizes, message):
    with pytest.raises(GrowError, match=message):
        growkit.grow(_source("gpt2"), sizes, method="exact")


def test_unknown_method_and_operator_are_refused():
    src = _source("gpt2")
    with pytest.raises(GrowError, match="unknown method"):
        growkit.grow(src, DOUBLE, method="magic")
    with pytest.raises(GrowError, match="unknown method 'exakt'; did you mean 'exact'"):
        growkit.grow(src, DOUBLE, method="exakt")
    with pytest.raises(GrowError, match="unknown width operator"):
        growkit.grow(src, DOUBLE, method="exact", width="magic")


def test_methods_lists_every_method():
    listed = growkit.methods()
    for name in ("stackbert", "interpolate", "net2net", "bert2bert", "exact"):
        assert name in listed and listed[name]


def test_method_names_are_matched_without_regard_to_case():
    src = _source("gpt2")
    upper = growkit.grow(src, DOUBLE, method="EXACT", seed=1).state_dict()
    lower = growkit.grow(src, DOUBLE, method="exact", seed=1).state_dict()
    assert all(torch.equal(upper[k], lower[k]) for k in lower)


@pytest.mark.parametrize("kwargs, message", [
    ({"data": [{}]}, r"data= does not apply to exact \(a fixed method\); exact takes noise=, width=, depth="),
    ({"steps": 50}, r"steps= does not apply to exact"),
    ({"rank": 2}, r"rank= does not apply to stackbert"),
])
def test_arguments_a_fixed_method_would_ignore_are_refused(kwargs, message):
    method = "stackbert" if "rank" in kwargs else "exact"
    with pytest.raises(GrowError, match=message):
        growkit.grow(_source("gpt2"), DOUBLE, method=method, **kwargs)


@pytest.mark.parametrize("method,options,message", [
    ("exact", {"noise": "lots"}, r"noise= of exact must be a number, got 'lots'"),
    ("mango", {"rank": "2"}, r"rank= of mango must be an integer, got '2'"),
    ("mango", {"rank": True}, r"rank= of mango must be an integer"),
    ("ligo", {"init": 3}, r"init= of ligo must be a method name"),
])
def test_option_values_of_the_wrong_type_are_refused_before_any_work(method, options, message):
    with pytest.raises(GrowError, match=message):
        growkit.grow(tiny_model("gpt2"), {"hidden_size": 64}, method, data=[{}] if method in ("ligo", "mango") else None,
             **options)
