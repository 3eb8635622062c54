"""LiGO: exact starts, what the fit touches, save/load with tied embeddings, and that fitting helps."""
from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, logits, model_inputs, perturb_norms
from torch.func import functional_call

import growkit
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_model
from growkit.core.errors import GrowError
from growkit.data import Masker, digits
from growkit.fit import FitConfig, fit, target_loss
from growkit.ops import METHODS, get_method, grow_fixed

FIXED_INITS = ("stackbert", "interpolate", "net2net", "bert2bert", "exact")
DOUBLE = {"hidden_size": 64, "num_hidden_layers": 4}
UNEVEN = {"hidden_size": 48, "num_hidden_layers": 5}
VOCAB, MASK_ID, SPECIAL = 64, 3, (0, 1, 2, 3)
PRETRAIN = {"bert": (200, 3e-3)}  # (steps, lr); post-LN MLM sees 15% of the tokens and learns slower


def quiet(steps: int, **settings) -> FitConfig:
    return FitConfig(steps=steps, progress=False, **settings)


# --- tiny tasks a 2-layer model learns in a second ---------------------------------
def _markov_ids(n: int, seq: int, seed: int) -> torch.Tensor:
    """Sequences from a fixed sparse Markov chain over the ordinary tokens (4..63)."""
    states = VOCAB - len(SPECIAL)
    chain = torch.Generator().manual_seed(1234)
    nexts = torch.randint(states, (states, 3), generator=chain)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.empty(n, seq, dtype=torch.long)
    ids[:, 0] = torch.randint(states, (n,), generator=gen)
    for t in range(1, seq):
        choice = torch.multinomial(torch.tensor([0.9, 0.1, 0.0]), n, replacement=True, generator=gen)
        ids[:, t] = nexts[ids[:, t - 1], choice]
    return ids + len(SPECIAL)


def task_batches(family: str, count: int, seed: int, batch: int = 16, seq: int = 16) -> list[dict]:
    if family == "vit":
        images, labels = digits(8)
        images = (images - 0.3) / 0.4
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[: count * batch]
        return [{"pixel_values": images[rows], "labels": labels[rows]} for rows in order.split(batch)]
    ids = _markov_ids(count * batch, seq, seed).split(batch)
    if family == "bert":
        masker, gen = Masker(MASK_ID, VOCAB, SPECIAL), torch.Generator().manual_seed(seed)
        return [masker(rows, gen) for rows in ids]
    return [{"input_ids": rows, "labels": rows} for rows in ids]


def eval_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model(**b).loss.item() for b in batches) / len(batches)


@pytest.fixture(scope="module")
def pretrained():
    """A tiny source per family, trained for a moment so that growth has something to keep."""
    cache = {}

    def get(family: str, **overrides):
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            steps, lr = PRETRAIN.get(family, (60, 1e-2))
            model = tiny_model(family, seed=0, **overrides).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
            for batch in task_batches(family, steps, seed=1):
                optimizer.zero_grad()
                model(**batch).loss.backward()
                optimizer.step()
            model.zero_grad(set_to_none=True)
            cache[key] = model.eval()
        return cache[key]

    return get


def _canonical_pair(family: str, sizes: dict, **overrides):
    src = tiny_model(family, **overrides)
    perturb_norms(src)
    adapter = adapter_for(src)
    return src, adapter, adapter.to_canonical(src), adapter.dims(adapter.target_config(src.config, sizes))


# --- starts -----------------------------------------------------------------------
@pytest.mark.parametrize("init", ["exact", "stackbert"])
@pytest.mark.parametrize("family", FAMILIES)
def test_same_size_identity_start_reproduces_the_source(family, init):
    src, _, canon, dims = _canonical_pair(family, {})
    operator = get_method("ligo").build(canon, dims, init=init)
    same = operator.materialize()
    assert all(torch.equal(same.tensors[k], canon.tensors[k]) for k in canon.tensors)
    big = growkit.grow(src, {}, method="ligo", init=init, data=task_batches(family, 1, 0), fit_config=quiet(0))
    inputs = model_inputs(src)
    assert torch.equal(logits(big, inputs), logits(src, inputs))


@pytest.mark.filterwarnings("ignore:bert is post-norm")
@pytest.mark.parametrize("init", FIXED_INITS)
@pytest.mark.parametrize("family", FAMILIES)
def test_step_zero_is_the_fixed_method_exactly(family, init):
    sizes = DOUBLE if init == "exact" else UNEVEN
    _, _, canon, dims = _canonical_pair(family, sizes, tie_word_embeddings=family != "vit")
    method = METHODS[init]
    expected = grow_fixed(canon, dims, method.width, method.depth, seed=11)
    got = get_method("ligo").build(canon, dims, init=init, seed=11).materialize()
    assert set(got.tensors) == set(expected.tensors)
    for name, tensor in expected.tensors.items():
        assert torch.equal(got.tensors[name], tensor), name


@pytest.mark.filterwarnings("ignore:bert is post-norm")
def test_step_zero_through_grow_equals_the_fixed_method():
    src = tiny_model("llama")
    data = task_batches("llama", 1, 0)
    ligo = growkit.grow(src, UNEVEN, method="ligo", init="bert2bert", data=data, seed=3, fit_config=quiet(0))
    fixed = growkit.grow(src, UNEVEN, method="bert2bert", seed=3)
    a, b = ligo.state_dict(), fixed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_width_groups_follow_the_official_tying():
    """One hidden B; per source layer q, k, v (kv units under GQA) and FFN; O's input has no B of its own."""
    _, _, canon, dims = _canonical_pair("llama", DOUBLE)
    operator = get_method("ligo").build(canon, dims)
    shapes = {g: tuple(p.shape) for g, p in operator.width.items()}
    assert shapes == {"D": (32, 32), "F": (2, 64, 64), "q": (2, 32, 32), "k": (2, 16, 16), "v": (2, 16, 16)}
    assert tuple(operator.depth["mlp_in"].shape) == (4, 2)
    assert operator.plans["layer.o"] == [(1, "q", "in"), (2, "D", "out")]  # GQA: O's input is query-indexed
    _, _, canon, dims = _canonical_pair("bert", DOUBLE)
    assert get_method("ligo").build(canon, dims).plans["layer.o"] == [(1, "v", "in"), (2, "D", "out")]


def test_default_start_is_the_official_one():
    _, _, canon, dims = _canonical_pair("gpt2", DOUBLE)
    operator = get_method("ligo").build(canon, dims, seed=2)
    for c in operator.width.values():
        assert (c >= 0).all() and torch.allclose(c.sum(-1), torch.ones(()))
    w = operator.depth["q"]
    assert torch.allclose(w.sum(-1), torch.ones(4))
    assert torch.equal(w.argmax(-1), torch.tensor([0, 1, 0, 1]))  # stacking, plus noise
    assert (w.max(-1).values < 1).all()


def test_bad_options_are_refused():
    _, _, canon, dims = _canonical_pair("gpt2", DOUBLE)
    with pytest.raises(GrowError, match="stackbert_noisy or a fixed method: stackbert"):
        get_method("ligo").build(canon, dims, init="magic")
    with pytest.raises(GrowError, match=r"rank= does not apply to ligo \(a learned method\); ligo takes init=, noise="):
        get_method("ligo").build(canon, dims, rank=2)
    with pytest.raises(GrowError, match="integer growth factor"):
        get_method("ligo").build(canon, dims.__class__(48, 192, 6, 6, 8, 2), init="exact")


def test_grow_without_data_says_data_is_needed():
    with pytest.raises(GrowError, match="needs data"):
        growkit.grow(tiny_model("gpt2"), DOUBLE, method="ligo")


# --- what the fit touches ---------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_only_the_operator_learns_and_the_source_is_untouched(family, pretrained):
    src = pretrained(family)  # trained, so no role is all zeros (fresh biases are, and get no gradient)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    adapter = adapter_for(src)
    config = adapter.target_config(src.config, DOUBLE)
    operator = get_method("ligo").build(adapter.to_canonical(src), adapter.dims(config))
    template = adapter.from_canonical(operator.materialize(), config, type(src))
    target_loss(operator, template, adapter, task_batches(family, 1, 0)[0]).backward()
    for name, p in operator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not b.requires_grad and b.grad is None for b in operator.buffers())
    assert all(p.grad is None for p in template.parameters())
    growkit.grow(src, DOUBLE, method="ligo", data=task_batches(family, 3, 0), fit_config=quiet(3))
    after = src.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in src.parameters())


@pytest.mark.parametrize(
    "family,overrides",
    [("gpt2", {}), ("bert", {}), ("llama", {"tie_word_embeddings": True}), ("llama", {}), ("vit", {}),
     ("gemma2", {"tie_word_embeddings": True})],  # Gemma: the tied head reads the width-rescaled embedding
)
def test_saved_model_is_the_model_the_operator_was_fit_for(family, overrides, tmp_path):
    """The official code's bug: with tied embeddings the saved decoder overwrote the fitted embeddings."""
    src = tiny_model(family, **overrides)
    big, result = growkit.grow(
        src, DOUBLE, method="ligo", data=task_batches(family, 4, 0), return_fit=True, fit_config=quiet(4)
    )
    assert len(result.losses) == 4
    adapter = adapter_for(big)
    assert adapter.is_tied(big) == (family in ("gpt2", "bert") or bool(overrides))
    tensors = result.operator()
    params = adapter.hf_state_dict(tensors, big, adapter.is_tied(big), result.operator.source_meta.extra)
    inputs = model_inputs(big)
    with torch.no_grad():
        fitted = functional_call(big, params, args=(), kwargs=inputs, strict=False).logits
    big.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = type(big).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(loaded, inputs), fitted, rtol=0, atol=1e-6)
    if adapter.is_tied(big):
        key = next(n for n, p in big.named_parameters() if p is big.get_input_embeddings().weight)
        assert torch.equal(loaded.get_output_embeddings().weight, params[key].detach())  # the fitted embedding


# --- the fit ----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_fit_lowers_held_out_loss(family, pretrained):
    """The default (rand) start loses part of what the source knew; 30 fit steps win a good share back."""
    src = pretrained(family)
    train, held_out = task_batches(family, 30, seed=2), task_batches(family, 4, seed=3)
    start = growkit.grow(src, DOUBLE, method="ligo", data=train, fit_config=quiet(0))
    fitted, result = growkit.grow(src, DOUBLE, method="ligo", data=train, return_fit=True, fit_config=quiet(30))
    assert result.diverged_at is None and len(result.losses) == 30
    source, before, after = eval_loss(src, held_out), eval_loss(start, held_out), eval_loss(fitted, held_out)
    assert before > source and after < before - (before - source) / 3, (source, before, after)


def test_nan_loss_stops_the_fit_and_keeps_the_last_finite_operator():
    src = tiny_model("vit")
    adapter = adapter_for(src)
    config = adapter.target_config(src.config, DOUBLE)
    canon, dims = adapter.to_canonical(src), adapter.dims(config)
    batches = task_batches("vit", 5, 0)
    poisoned = [dict(b) for b in batches]
    poisoned[3]["pixel_values"] = torch.full_like(poisoned[3]["pixel_values"], float("nan"))

    def run(data, steps):
        operator = get_method("ligo").build(canon, dims)
        template = adapter.from_canonical(operator.materialize(), config, type(src))
        return fit(operator, template, adapter, data, quiet(steps, first_check=0))

    with pytest.warns(UserWarning, match="fit stopped at step 4: the loss is nan; kept the operator after step 2"):
        stopped = run(poisoned, 5)
    clean = run(batches, 2)  # the operator of step 2 is the one after two updates
    assert stopped.diverged_at == 4 and len(stopped.losses) == 3  # the 4th batch is poisoned
    assert stopped.losses[:2] == clean.losses
    a, b = stopped.operator.state_dict(), clean.operator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert all(torch.isfinite(t).all() for t in stopped.operator.materialize().tensors.values())


# --- the held-out check -------------------------------------------------------------
def _ligo_fit(family: str, src, data, config: FitConfig, init: str = "stackbert_noisy"):
    adapter = adapter_for(src)
    target = adapter.target_config(src.config, DOUBLE)
    canon, dims = adapter.to_canonical(src), adapter.dims(target)
    operator = get_method("ligo").build(canon, dims, init=init)
    start = {k: v.clone() for k, v in operator.state_dict().items()}
    template = adapter.from_canonical(operator.materialize(), target, type(src))
    return fit(operator, template, adapter, data, config), start


def test_the_held_out_check_keeps_the_start_when_the_fit_only_hurts(pretrained):
    """An lr far too high wrecks the operator: the check stops after `patience` checks and keeps the start."""
    src = pretrained("gpt2")
    data = task_batches("gpt2", 40, seed=2)
    result, start = _ligo_fit("gpt2", src, data, quiet(40, lr=0.3, warmup=0, first_check=2, eval_batches=3, patience=2),
                              init="exact")
    steps = [step for step, _ in result.held_out]
    assert steps == [0, 2, 4] and result.stopped_at == 4 and len(result.losses) == 4 and result.best_step == 0
    assert result.held_out[1][1] > result.held_out[0][1]
    kept = result.operator.state_dict()
    assert all(torch.equal(kept[k], start[k]) for k in start)


def test_the_held_out_check_keeps_the_best_operator_of_a_useful_fit(pretrained):
    """From a lossy start the held-out loss falls; the operator kept is the best one checked, on unseen batches."""
    src = pretrained("gpt2")
    data = task_batches("gpt2", 34, seed=2)
    result, _ = _ligo_fit("gpt2", src, data, quiet(30, first_check=5, eval_batches=4, patience=3))
    losses = dict(result.held_out)
    assert list(losses) == [0, 5, 10, 20, 30] and result.stopped_at is None
    assert result.best_step == min(losses, key=losses.get) > 0 and losses[result.best_step] < losses[0] - 0.05
    adapter = adapter_for(src)
    grown = adapter.from_canonical(result.operator.materialize(), adapter.target_config(src.config, DOUBLE), type(src))
    assert abs(eval_loss(grown, data[:4]) - losses[result.best_step]) < 1e-5  # the held-out batches: the first 4


def test_held_out_checks_come_early_then_at_doubling_intervals():
    assert FitConfig(steps=100).check_steps() == [5, 10, 20, 40, 80, 100]
    assert FitConfig(steps=3).check_steps() == [3] and FitConfig(steps=0).check_steps() == []
    assert FitConfig(steps=100, first_check=0).check_steps() == []
    assert FitConfig(steps=100, patience=0).check_steps() == []  # patience 0 turns the check off too


def test_bad_fit_settings_are_refused_before_any_work():
    for settings, message in (({"first_check": 5, "eval_batches": 0}, "needs eval_batches"),
                              ({"patience": -1}, "patience must not be negative"), ({"lr": 0.0}, "lr must be positive")):
        with pytest.raises(GrowError, match=message):
            fit(None, None, None, None, quiet(5, **settings))
