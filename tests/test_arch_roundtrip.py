"""Adapters: HF model -> canonical -> HF model is bit-exact, for every family and class.

Configs are drawn at random (small sizes, GQA groups for Llama, tied and untied
decoders, optional biases); every parameter is perturbed first so that a swapped
or dropped tensor cannot hide behind an initialisation of zeros or ones.
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import DECODERS, FAMILIES, logits, model_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from growkit.arch import ADAPTERS, adapter_for
from growkit.arch.tiny import tiny_config, tiny_model
from growkit.core.canonical import GROWABLE, parse_axis
from growkit.core.errors import GrowError

TIEABLE = ("gpt2", "bert", "llama", *DECODERS)
HYPOTHESIS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ---------------------------------------------------------------
def perturb_all(model, seed: int = 1) -> None:
    """Every parameter gets noise: norms stop being 1/0 and zero-initialised biases become distinct."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def build(family: str, head: bool, seed: int, **overrides):
    model = tiny_model(family, head=head, seed=seed, **overrides)
    perturb_all(model, seed + 1)
    return model.eval()


def assert_round_trip(model) -> None:
    adapter = adapter_for(model)
    canon = adapter.to_canonical(model)
    canon.validate()
    for name, t in canon.tensors.items():
        spec = canon.specs[name]
        assert len(spec) == t.dim(), (name, spec, tuple(t.shape))
        axes = [parse_axis(tok)[0] for tok in spec]
        assert (axes[0] == "L") == name.startswith("layer."), (name, spec)
        assert "L" not in axes[1:], (name, spec)
        for tok in spec:
            axis, side = parse_axis(tok)
            assert (side is not None) == (axis in GROWABLE), (name, spec)
    assert canon.tied == (adapter.is_tied(model))
    if model.config.model_type != "vit":
        assert ("lm_head" in canon.tensors) == (adapter.has_head(model) and not canon.tied)
    # the canonical tensors never alias the source's parameters
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(t.data_ptr() in ptrs for t in canon.tensors.values())

    rebuilt = adapter.from_canonical(canon, copy.deepcopy(model.config), type(model))
    before, after = model.state_dict(), rebuilt.state_dict()
    assert set(before) == set(after)
    for key in before:
        assert torch.equal(before[key], after[key]) or _same_gain(model, key, before[key], after[key]), key
    inputs = model_inputs(model, seq=7)
    assert torch.equal(logits(model, inputs), logits(rebuilt, inputs))


def _same_gain(model, key: str, before: torch.Tensor, after: torch.Tensor) -> bool:
    """Gemma's norms: the forward reads only 1 + w (in fp32), which the canonical view holds exactly."""
    return model.config.model_type == "gemma2" and "norm" in key and torch.equal(1.0 + before, 1.0 + after)


# --- random configs --------------------------------------------------------
@st.composite
def gpt2_case(draw):
    heads, head_dim = draw(st.integers(1, 4)), draw(st.sampled_from([2, 4, 8]))
    hidden = heads * head_dim
    cfg = dict(
        n_embd=hidden,
        n_head=heads,
        n_layer=draw(st.integers(1, 3)),
        n_inner=draw(st.sampled_from([None, 8, 24, 2 * hidden])),
        tie_word_embeddings=draw(st.booleans()),
    )
    return cfg, draw(st.booleans())


@st.composite
def bert_case(draw):
    heads, head_dim = draw(st.integers(1, 4)), draw(st.sampled_from([2, 4, 8]))
    cfg = dict(
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 3)),
        intermediate_size=draw(st.integers(4, 48)),
        type_vocab_size=draw(st.integers(1, 3)),
        tie_word_embeddings=draw(st.booleans()),
    )
    return cfg, draw(st.booleans())


@st.composite
def vit_case(draw):
    heads, head_dim = draw(st.integers(1, 4)), draw(st.sampled_from([2, 4, 8]))
    patch, grid = draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 3))
    cfg = dict(
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 3)),
        intermediate_size=draw(st.integers(4, 48)),
        patch_size=patch,
        image_size=patch * grid,
        num_channels=draw(st.integers(1, 3)),
        num_labels=draw(st.integers(1, 5)),
        qkv_bias=draw(st.booleans()),
    )
    return cfg, draw(st.booleans())


@st.composite
def llama_case(draw):
    kv_heads, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    heads = kv_heads * group
    head_dim = draw(st.sampled_from([2, 4, 8]))
    # Llama's head_dim is its own field: hidden is a multiple of heads, but not necessarily heads * head_dim
    per_head = draw(st.sampled_from([head_dim, 2, 4]))
    cfg = dict(
        hidden_size=heads * per_head,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        num_hidden_layers=draw(st.integers(1, 3)),
        intermediate_size=draw(st.integers(4, 48)),
        attention_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        tie_word_embeddings=draw(st.booleans()),
    )
    return cfg, draw(st.booleans())


@HYPOTHESIS
@given(gpt2_case(), st.integers(0, 2**16))
def test_gpt2_round_trip(case, seed):
    cfg, head = case
    assert_round_trip(build("gpt2", head, seed, **cfg))


@HYPOTHESIS
@given(bert_case(), st.integers(0, 2**16))
def test_bert_round_trip(case, seed):
    cfg, head = case
    assert_round_trip(build("bert", head, seed, **cfg))


@HYPOTHESIS
@given(vit_case(), st.integers(0, 2**16))
def test_vit_round_trip(case, seed):
    cfg, head = case
    assert_round_trip(build("vit", head, seed, **cfg))


@HYPOTHESIS
@given(llama_case(), st.integers(0, 2**16))
def test_llama_round_trip(case, seed):
    cfg, head = case
    assert_round_trip(build("llama", head, seed, **cfg))


@st.composite
def decoder_case(draw, family: str):
    """A random config of one of the newer decoders (Phi-3 has no head_dim field: hidden = heads x head_dim)."""
    kv_heads, group = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    heads, head_dim = kv_heads * group, draw(st.sampled_from([2, 4, 8]))
    cfg = dict(hidden_size=heads * head_dim, num_attention_heads=heads, num_key_value_heads=kv_heads,
               num_hidden_layers=draw(st.integers(1, 3)), intermediate_size=draw(st.integers(4, 48)),
               tie_word_embeddings=draw(st.booleans()))
    if family != "phi3":
        cfg["head_dim"] = head_dim
    if family == "qwen3":
        cfg["attention_bias"] = draw(st.booleans())
    return cfg, draw(st.booleans())


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_round_trip(family):
    @HYPOTHESIS
    @given(decoder_case(family), st.integers(0, 2**16))
    def check(case, seed):
        cfg, head = case
        assert_round_trip(build(family, head, seed, **cfg))

    check()


def test_fused_and_per_head_tensors_land_on_their_roles():
    """Phi-3's fused qkv and gate/up are cut in output order; Qwen3's per-head norms are their own roles."""
    phi3 = build("phi3", True, seed=0)
    canon = adapter_for(phi3).to_canonical(phi3)
    attn, mlp = phi3.model.layers[1].self_attn, phi3.model.layers[1].mlp
    q_size = phi3.config.num_attention_heads * 8
    assert torch.equal(canon.tensors["layer.q"][1], attn.qkv_proj.weight[:q_size].t())
    assert torch.equal(canon.tensors["layer.v"][1], attn.qkv_proj.weight[-q_size // 2:].t())
    assert torch.equal(canon.tensors["layer.mlp_gate"][1], mlp.gate_up_proj.weight[:64].t())
    assert torch.equal(canon.tensors["layer.mlp_in"][1], mlp.gate_up_proj.weight[64:].t())
    qwen3 = build("qwen3", False, seed=0)
    canon = adapter_for(qwen3).to_canonical(qwen3)
    assert canon.specs["layer.q_norm"] == ("L", "H")
    assert torch.equal(canon.tensors["layer.k_norm"][0], qwen3.layers[0].self_attn.k_norm.weight)
    qwen2 = build("qwen2", False, seed=0)
    assert {"layer.q_bias", "layer.k_bias", "layer.v_bias"} <= set(adapter_for(qwen2).to_canonical(qwen2).tensors)


# --- every class and tying mode, deterministically ---------------------------
VARIANTS = [
    (family, head, tie)
    for family in FAMILIES
    for head in (True, False)
    for tie in ((True, False) if family in TIEABLE else (None,))
]


@pytest.mark.parametrize("family,head,tie", VARIANTS)
def test_every_class_round_trips_and_is_supported(family, head, tie):
    overrides = {} if tie is None else {"tie_word_embeddings": tie}
    model = build(family, head, seed=0, **overrides)
    assert type(model).__name__ in ADAPTERS[family].class_names
    assert type(model) is (ADAPTERS[family].head_class if head else ADAPTERS[family].base_class)
    assert_round_trip(model)


@pytest.mark.parametrize("family,head,tie", VARIANTS)
def test_hf_state_dict_is_differentiable(family, head, tie):
    """``fit`` runs the model on ``hf_state_dict`` through functional_call: same output, gradients reach the roles."""
    overrides = {} if tie is None else {"tie_word_embeddings": tie}
    model = build(family, head, seed=0, **overrides)
    adapter = adapter_for(model)
    canon = adapter.to_canonical(model)
    leaves = {k: v.clone().requires_grad_(True) for k, v in canon.tensors.items()}
    params = adapter.hf_state_dict(leaves, model, canon.tied)
    inputs = model_inputs(model, seq=7)
    out = functional_call(model, params, args=(), kwargs=inputs, strict=False)
    out = out.logits if hasattr(out, "logits") else out.last_hidden_state
    # not torch.equal: nn.Linear weights arrive as transposed (non-contiguous) views, and matmul may then
    # sum in another order; from_canonical copies into the model's own layout and is bit-exact
    assert torch.allclose(out, logits(model, inputs), rtol=0, atol=1e-5)
    out.square().sum().backward()
    # BertModel's and ViTModel's pooler do not feed last_hidden_state; untied BERT never reads mlm_bias
    unread = {"pooler", "pooler_bias", "mlm_bias"}
    for name, leaf in leaves.items():
        if name not in unread:
            assert leaf.grad is not None and leaf.grad.abs().sum() > 0, name


# --- family details ----------------------------------------------------------
def test_bert_decoder_bias_is_lm_head_bias_tied_and_untied():
    """transformers 5 ties cls.predictions.bias to decoder.bias only with tied embeddings."""
    for tie in (True, False):
        model = build("bert", True, seed=0, tie_word_embeddings=tie)
        adapter = adapter_for(model)
        canon = adapter.to_canonical(model)
        assert torch.equal(canon.tensors["lm_head_bias"], model.cls.predictions.decoder.bias)
        assert ("mlm_bias" in canon.tensors) == (not tie)
        shifted = canon.with_tensors({**canon.tensors, "lm_head_bias": canon.tensors["lm_head_bias"] + 1.0})
        rebuilt = adapter.from_canonical(shifted, model.config, type(model))
        inputs = model_inputs(model, seq=7)
        assert torch.allclose(logits(rebuilt, inputs), logits(model, inputs) + 1.0, atol=1e-5)
        if tie:
            sd = rebuilt.state_dict()
            assert torch.equal(sd["cls.predictions.bias"], sd["cls.predictions.decoder.bias"])


def test_tied_norm_specs():
    bert = adapter_for(tiny_model("bert")).to_canonical(tiny_model("bert"))
    assert bert.tied and bert.specs["head_norm"] == ("D.in",) and bert.specs["head_norm_bias"] == ("D.in",)
    untied = tiny_model("bert", tie_word_embeddings=False)
    assert adapter_for(untied).to_canonical(untied).specs["head_norm"] == ("D.out",)
    llama = tiny_model("llama", tie_word_embeddings=True)
    assert adapter_for(llama).to_canonical(llama).specs["final_norm"] == ("D.in",)
    llama = tiny_model("llama")
    assert adapter_for(llama).to_canonical(llama).specs["final_norm"] == ("D.out",)


def test_vit_special_tensors_are_in_math_orientation():
    model = build("vit", True, seed=0, num_channels=3)
    canon = adapter_for(model).to_canonical(model)
    cfg, d = model.config, model.config.hidden_size
    n = (cfg.image_size // cfg.patch_size) ** 2
    assert canon.tensors["cls"].shape == (d,)
    assert canon.tensors["pos_emb"].shape == (n + 1, d)
    assert canon.tensors["patch"].shape == (3 * cfg.patch_size**2, d)
    # the patch embedding is the linear map of a flattened (C, p, p) patch
    pixels = model_inputs(model)["pixel_values"]
    patches = pixels.unfold(2, cfg.patch_size, cfg.patch_size).unfold(3, cfg.patch_size, cfg.patch_size)
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(pixels.shape[0], n, -1)
    expected = flat @ canon.tensors["patch"] + canon.tensors["patch_bias"]
    with torch.no_grad():
        got = model.vit.embeddings.patch_embeddings(pixels)
    assert torch.allclose(got, expected, atol=1e-5)


# --- adapter_for ---------------------------------------------------------------
def test_adapter_for_rejects_unsupported_models():
    from transformers import BertForSequenceClassification, OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(
        OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, vocab_size=64,
                  max_position_embeddings=32, word_embed_proj_dim=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    )
    with pytest.raises(GrowError, match="unsupported model type 'opt'"):
        adapter_for(opt)
    with pytest.raises(GrowError, match="unsupported class BertForSequenceClassification"):
        adapter_for(BertForSequenceClassification(tiny_config("bert", num_labels=3)))
    from transformers import ViTModel

    with pytest.raises(GrowError, match="use_mask_token"):
        adapter_for(tiny_config("vit")).to_canonical(ViTModel(tiny_config("vit"), use_mask_token=True))
    assert set(ADAPTERS) == set(FAMILIES)


# --- target_config ---------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_target_config_keeps_head_dim_and_ffn_ratio(family):
    config = tiny_config(family)
    adapter = adapter_for(config)
    src = adapter.dims(config)
    snapshot = config.to_dict()
    new = adapter.target_config(config, {"hidden_size": 64})
    assert config.to_dict() == snapshot  # the source config is untouched
    dims = adapter.dims(new)
    assert (dims.hidden, dims.head_dim, dims.heads) == (64, src.head_dim, 2 * src.heads)
    assert dims.ffn == 2 * src.ffn and dims.layers == src.layers
    assert dims.heads // dims.kv_heads == src.heads // src.kv_heads
    assert new.hidden_size == 64
    model = ADAPTERS[family].head_class(new)  # HF accepts it and builds the sizes we asked for
    canon = adapter.to_canonical(model)
    assert canon.dims == dims
    assert canon.tensors["layer.q"].shape[-1] == dims.heads * dims.head_dim


def test_llama_target_config_keeps_group_and_writes_head_dim():
    config = tiny_config("llama")  # 4 heads, 2 kv heads, head_dim 8
    new = adapter_for(config).target_config(config, {"hidden_size": 64, "num_hidden_layers": 3})
    assert (new.num_attention_heads, new.num_key_value_heads, new.head_dim) == (8, 4, 8)
    assert new.to_dict()["head_dim"] == 8 and new.num_hidden_layers == 3
    # head_dim is not hidden/heads: growth keeps it and changes the head count
    config = tiny_config("llama", head_dim=16)
    new = adapter_for(config).target_config(config, {"hidden_size": 128})
    assert (new.num_attention_heads, new.num_key_value_heads, new.head_dim) == (8, 4, 16)
    model = ADAPTERS["llama"].head_class(new)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (8 * 16, 128)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (4 * 16, 128)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "sizes,match",
    [
        ({"hidden_size": 16}, "smaller"),
        ({"num_hidden_layers": 1}, "smaller"),
        ({"intermediate_size": 8}, "smaller"),
        ({"hidden_size": 36}, "head_dim"),  # not a multiple of head_dim 8
        ({"hidden_size": 64, "num_attention_heads": 6}, "does not divide"),
        ({"hidden_size": 0}, "positive"),
        ({"width": 64}, "unknown size"),
    ],
)
def test_target_config_rejects(family, sizes, match):
    config = tiny_config(family)
    with pytest.raises(GrowError, match=match):
        adapter_for(config).target_config(config, sizes)


@pytest.mark.parametrize("family", ["gpt2", "bert", "vit"])
def test_kv_heads_need_gqa(family):
    config = tiny_config(family)
    with pytest.raises(GrowError, match="grouped-query"):
        adapter_for(config).target_config(config, {"hidden_size": 64, "num_key_value_heads": 4})


def test_llama_kv_heads_must_divide_heads():
    config = tiny_config("llama")
    adapter = adapter_for(config)
    with pytest.raises(GrowError, match="num_key_value_heads=3 does not divide num_attention_heads=8"):
        adapter.target_config(config, {"hidden_size": 64, "num_key_value_heads": 3})
    bad = tiny_config("llama", num_key_value_heads=3)  # HF itself accepts 4 heads over 3 kv heads
    with pytest.raises(GrowError, match="does not divide"):
        adapter.check_config(bad)


@pytest.mark.parametrize("family", ["gpt2", "bert", "vit"])
def test_check_config_rejects_heads_not_dividing_hidden(family):
    config = tiny_config(family)
    adapter = adapter_for(config)
    bad = copy.deepcopy(config)
    bad.num_attention_heads = 3  # assignment skips HF's own validators
    with pytest.raises(GrowError, match="does not divide"):
        adapter.check_config(bad)
