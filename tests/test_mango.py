"""Mango: the ring contraction, packing, exact starts, refusals, parameter count and fitting."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import DECODERS, logits, model_inputs, perturb_norms
from torch.func import functional_call

import growkit
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_model
from growkit.core.canonical import Dims
from growkit.core.errors import GrowError
from growkit.fit import FitConfig, fit
from growkit.ops import METHODS, grow_fixed
from growkit.ops.depth import deepen
from growkit.ops.mango import MangoOperator, parameter_count
from growkit.ops.mango.packing import Packing, _placements
from growkit.ops.mango.start import build_start
from growkit.ops.ring import execute as ring_execute
from growkit.ops.ring import plan as ring_planning
from growkit.ops.ring.chunks import Chunk, Workspace, chunked_ring_map
from growkit.ops.ring.execute import ring_map, ring_map_split, run_plan
from growkit.ops.ring.plan import chain_plan, ring_plan
from growkit.ops.width import _new_output_units, _next_layer, widen_tensor

GROW = {"hidden_size": 64, "num_hidden_layers": 4}
MIN_RANK = {"stackbert": 1, "interpolate": 1, "net2net": 2, "bert2bert": 2, "exact": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waits on a busy machine (much faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grown(family: str, sizes: dict = GROW, dtype=torch.float64, **overrides):
    model = tiny_model(family, **overrides).to(dtype)
    perturb_norms(model)
    adapter = adapter_for(model)
    config = adapter.target_config(model.config, sizes)
    return model, adapter, adapter.to_canonical(model), config


def _cores(rank: int, sizes, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rank, n1, n2, rank, generator=gen, dtype=torch.float64) for n1, n2 in sizes]


# --- the contraction ------------------------------------------------------------
SIZES = [(3, 4), (2, 3), (2, 3), (2, 3)]  # (B1, B2), (D1, D2), (D1, D2), (L1, L2)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_ring_map_equals_the_full_map(rank):
    cores = _cores(rank, SIZES)
    m1 = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    full = torch.einsum("wbBx,xiIy,yoOz,zlLw->biolBIOL", *cores)  # S, built only at tiny sizes
    expected = torch.einsum("biol,biolBIOL->BIOL", m1, full)
    assert (ring_map(m1, cores) - expected).abs().max() < 1e-10
    chunked = ring_map(m1, cores, max_elements=1)
    assert (chunked - expected).abs().max() < 1e-10


def test_rank_one_is_the_kronecker_form():
    s_b, s_i, s_o, s_l = (c[0, :, :, 0] for c in _cores(1, SIZES))
    m1 = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    got = ring_map(m1, [c[None, :, :, None] for c in (s_b, s_i, s_o, s_l)])
    for b2 in range(4):
        for l2 in range(3):
            want = sum(s_b[b1, b2] * s_l[l1, l2] * s_i.T @ m1[b1, :, :, l1] @ s_o for b1 in range(3) for l1 in range(2))
            assert (got[b2, :, :, l2] - want).abs().max() < 1e-10


def test_chunked_checkpointed_gradients_are_right():
    m1 = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    cores = [c.requires_grad_() for c in _cores(2, SIZES)]
    assert torch.autograd.gradcheck(lambda *c: ring_map(m1, list(c), max_elements=8), cores)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("lead", [(), (2,), (3, 2)])
@pytest.mark.parametrize("sizes", [SIZES, [(5, 7), (4, 6), (3, 8), (2, 5)]])
@pytest.mark.parametrize("order", [(1, 0, 3, 2), (0, 1, 2, 3), (2, 1, 3, 0), (3, 2, 1, 0)])
def test_every_chain_plan_equals_opt_einsum(rank, lead, sizes, order):
    cores = _cores(rank, sizes, seed=rank)
    x = torch.randn(*lead, *(n1 for n1, _ in sizes), dtype=torch.float64)
    shapes = tuple(tuple(t.shape) for t in (x, *cores))
    expected = ring_planning._expression(shapes)(x, *cores, backend="torch")
    got = run_plan(chain_plan(shapes, order), x, cores)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-10 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("shape", ["deit", "gpt2"])
@pytest.mark.parametrize("rank", [1, 2, 4, 8])
def test_the_mango_benchmark_shapes_contract_as_chains(shape, rank):
    (b1, d1, l1), (b2, d2, l2) = {"deit": ((12, 384, 12), (12, 768, 12)), "gpt2": ((12, 768, 12), (12, 1024, 24))}[shape]
    shapes = ((b1, d1, d1, l1), (rank, b1, b2, rank), (rank, d1, d2, rank), (rank, d1, d2, rank), (rank, l1, l2, rank))
    plan = ring_plan(shapes)
    assert plan is not None
    assert sum(step.copy is not None for step in plan.steps) <= 1  # at most one permute of a large intermediate


def test_the_layout_plan_gradients_are_right():
    x = torch.randn(2, 3, 2, 2, 2, dtype=torch.float64)
    cores = [c.requires_grad_() for c in _cores(2, SIZES, seed=4)]
    assert torch.autograd.gradcheck(lambda *c: ring_map(x, list(c)), cores)


def _chunks(shapes, order, core: int, size: int) -> list[Chunk]:
    """``chain_plan(order)`` for every chunk of ``size`` along core ``core``'s target axis."""
    n = shapes[core + 1][2]
    sizes = [(start, min(size, n - start)) for start in range(0, n, size)]
    return [Chunk(chain_plan(ring_execute._narrowed(shapes, core, part), order), core, start, part) for start, part in sizes]


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("lead", [(), (3, 2)])
@pytest.mark.parametrize("order", [(1, 0, 3, 2), (0, 1, 2, 3), (2, 0, 3, 1)])  # the last two permute twice or more
@pytest.mark.parametrize("core", [0, 2])
def test_a_chunked_map_in_a_workspace_equals_opt_einsum(rank, lead, order, core):
    sizes = [(5, 7), (4, 6), (3, 8), (2, 5)]
    cores = [c.requires_grad_() for c in _cores(rank, sizes, seed=7)]
    x = torch.randn(*lead, *(n1 for n1, _ in sizes), dtype=torch.float64)
    shapes = tuple(tuple(t.shape) for t in (x, *cores))
    expected = ring_planning._expression(shapes)(x, *cores, backend="torch")
    workspace = Workspace()
    got = chunked_ring_map(x, cores, _chunks(shapes, order, core, 3), len(lead) + core, workspace)
    assert (got - expected).abs().max() < 1e-12 * expected.abs().max()
    weight = torch.randn_like(expected)
    want = torch.autograd.grad(expected, cores, weight)
    grads = torch.autograd.grad(got, cores, weight)
    assert all((g - w).abs().max() < 1e-12 * w.abs().max() for g, w in zip(grads, want))


def test_the_workspace_is_reused_across_chunks_and_calls():
    cores = [c.requires_grad_() for c in _cores(2, SIZES, seed=8)]
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    workspace = Workspace()
    ring_map(x, cores, max_elements=8, workspace=workspace).sum().backward()
    buffers = [b.data_ptr() for b in workspace._buffers]
    assert len(buffers) == 4  # a chain of four steps: four buffers for the backward pass, two of them for the forward
    first = [c.grad.clone() for c in cores]
    for c in cores:
        c.grad = None
    ring_map(x, cores, max_elements=8, workspace=workspace).sum().backward()
    assert [b.data_ptr() for b in workspace._buffers] == buffers
    assert all(torch.equal(c.grad, f) for c, f in zip(cores, first))


def test_a_chunked_map_of_a_source_that_needs_a_gradient_goes_through_autograd():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    cores = [c.requires_grad_() for c in _cores(2, SIZES, seed=9)]
    assert torch.autograd.gradcheck(lambda x, *c: ring_map(x, list(c), max_elements=8), (x, *cores))


#: B and L cores small beside D: their steps are cheap, so a rank-1 map recomputes their outputs
CHEAP_BL = [(4, 4), (24, 40), (24, 40), (3, 3)]


@pytest.mark.parametrize("rank,sizes,max_elements", [
    (1, CHEAP_BL, 2**30), (2, CHEAP_BL, 2**30), (3, SIZES, 2**30), (2, SIZES, 8),  # the last one chunked
])
def test_a_split_map_equals_the_whole_map_split(rank, sizes, max_elements, monkeypatch):
    monkeypatch.setattr(ring_execute, "SMALL", 0)  # split (and recompute) even at these sizes
    x = torch.randn(*(n1 for n1, _ in sizes), dtype=torch.float64)
    cores = _cores(rank, sizes, seed=5)
    split = [1, sizes[0][1] - 2, 1]
    whole = ring_map(x, cores).split(split)
    pieces = ring_map_split(x, cores, split, max_elements=max_elements)
    assert [p.shape for p in pieces] == [w.shape for w in whole]
    assert all((p - w).abs().max() < 1e-10 * w.abs().max() for p, w in zip(pieces, whole))
    weights = [torch.randn_like(w) for w in whole]
    leaves = [c.detach().requires_grad_() for c in cores]
    torch.autograd.backward(ring_map_split(x, leaves, split, max_elements=max_elements), weights)
    expected = torch.autograd.grad(ring_map(x, cores := [c.detach().requires_grad_() for c in cores]), cores, torch.cat(weights))
    assert all((c.grad - e).abs().max() < 1e-10 * e.abs().max() for c, e in zip(leaves, expected))


def _stored_elements(x, cores) -> int:
    """Elements autograd keeps for the backward pass of the map (distinct storages, inputs excluded)."""
    kept, inputs = {}, {t.untyped_storage().data_ptr() for t in (x, *cores)}

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ring_map(x, cores)
    return sum(kept.values())


def test_cheap_steps_are_recomputed_instead_of_stored(monkeypatch):
    monkeypatch.setattr(ring_execute, "SMALL", 0)
    x = ring_execute.source_layout(torch.randn(4, 24, 24, 3, dtype=torch.float64), [(1, n1, n2, 1) for n1, n2 in CHEAP_BL])
    cores = [c.requires_grad_() for c in _cores(1, CHEAP_BL, seed=6)]
    plan = ring_plan(tuple(tuple(t.shape) for t in (x, *cores)))
    assert [len(segment) for segment in ring_execute._segments(plan.steps, plan.flops)] == [3, 1]  # B, L, I | O
    grads = torch.autograd.grad(ring_map(x, cores).square().sum(), cores)
    stored = _stored_elements(x, cores)
    assert stored <= 4 * 40 * 24 * 3 + 24 * 40  # the last step's input (B2 x D2 x D1 x L2), its core at most
    monkeypatch.setattr(ring_execute, "RECOMPUTE", 0.0)  # every step expensive: everything stored
    assert _stored_elements(x, cores) > 2 * stored
    plain = torch.autograd.grad(ring_map(x, cores).square().sum(), cores)
    assert all((g - p).abs().max() < 1e-10 * p.abs().max() for g, p in zip(grads, plain))


def test_source_layout_keeps_the_values_in_the_order_the_map_reads():
    x = torch.randn(4, 24, 24, 3, dtype=torch.float64)
    core_shapes = [(1, n1, n2, 1) for n1, n2 in CHEAP_BL]
    laid = ring_execute.source_layout(x, core_shapes)
    assert torch.equal(laid, x)
    assert laid.permute(ring_plan((tuple(x.shape), *core_shapes)).source_perm).is_contiguous()
    chunked = ring_execute.source_layout(x, core_shapes, max_elements=512)  # laid out for the chunks' plan
    shapes = (tuple(x.shape), *core_shapes)
    chunk_plan = ring_plan(ring_execute._narrowed(shapes, *ring_execute._chunking(shapes, 512)))
    assert torch.equal(chunked, x)
    assert chunked.permute(chunk_plan.source_perm).is_contiguous()
    assert not laid.permute(chunk_plan.source_perm).is_contiguous()


def test_a_path_that_is_not_a_chain_is_left_to_opt_einsum():
    assert ring_planning._chain([(0, 2), (0, 3), (1, 2), (0, 1)], 4) == [1, 0, 3, 2]
    assert ring_planning._chain([(1, 2), (0, 3), (0, 2), (0, 1)], 4) is None  # two cores joined first


# --- packing --------------------------------------------------------------------
@pytest.mark.parametrize("family,overrides,blocks", [
    ("gpt2", {}, lambda f, d: 4 + 2 * math.ceil(f / d)),
    ("llama", {"intermediate_size": 72}, lambda f, d: 4 + 3 * math.ceil(f / d)),  # GQA, padded FFN tiles
])
def test_pack_unpack_round_trip_is_exact(family, overrides, blocks):
    _, _, src, _ = _grown(family, **overrides)
    placements = _placements(src)
    packing = Packing(placements, src.dims)
    assert packing.blocks == blocks(src.dims.ffn, src.dims.hidden)
    for name, t in src.tensors.items():
        p = placements[name]
        assert torch.equal(p.unpack(p.pack(t, packing.layouts), packing.layouts), t), name
    m1 = torch.cat([placements[n].pack(src.tensors[n], packing.layouts) for n in packing.matrices])
    assert m1.shape == (packing.blocks, src.dims.hidden, src.dims.hidden, src.dims.layers)


# --- the start --------------------------------------------------------------------
def _reference(src, tgt: Dims, op: MangoOperator, init: str):
    """The fixed method ``init`` applied with Mango's copy map (noise 0)."""
    method = METHODS[init]
    if method.width == "tile":
        return grow_fixed(src, tgt, "tile", method.depth, noise=0.0)
    wide = {}
    for name, t in src.tensors.items():
        grown = widen_tensor(t, src.specs[name], op.copy_map)
        if method.width == "aki" and src.specs[name][0] == "L":
            grown = torch.where(_new_output_units(grown, src.specs[name], op.copy_map), _next_layer(grown), grown)
        wide[name] = grown
    at_src_depth = Dims(tgt.hidden, tgt.ffn, tgt.heads, tgt.kv_heads, tgt.head_dim, src.dims.layers)
    return deepen(src.with_tensors(wide, at_src_depth), tgt.layers,
                  method.depth_operator.layer_map(src.dims.layers, tgt.layers))


#: a deep GQA Llama grown by x1.5 in every width (6/2 -> 9/3 heads, FFN 48 -> 72) and 8 -> 10 layers
DEEP = dict(num_hidden_layers=8, hidden_size=24, num_attention_heads=6, num_key_value_heads=2, head_dim=4,
            intermediate_size=48, tie_word_embeddings=True)
DEEP_GROW = {"num_hidden_layers": 10, "hidden_size": 36, "num_attention_heads": 9, "intermediate_size": 72}


@pytest.mark.parametrize("init", ["stackbert", "interpolate", "net2net", "bert2bert"])
def test_a_deep_gqa_start_by_a_non_integer_factor_equals_the_fixed_operator(init):
    _, adapter, src, config = _grown("llama", DEEP_GROW, **DEEP)
    tgt = adapter.dims(config)
    assert (tgt.heads, tgt.kv_heads, tgt.ffn) == (9, 3, 72)
    op = MangoOperator(src, tgt, init=init, noise=0.0, seed=1, split="even")  # the default rank: the start's minimum
    assert op.rank == MIN_RANK[init] == len(build_start(op.src, op.tgt, init, 0.0, torch.Generator()).terms)
    assert parameter_count(src, tgt, init=init, noise=0.0, split="even") == sum(p.numel() for p in op.parameters())
    reference = _reference(src, tgt, op, init)
    for name, t in op.materialize().tensors.items():
        assert (t - reference.tensors[name]).abs().max() < 1e-12, name


@pytest.mark.filterwarnings("ignore:bert is post-norm")
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "vit", *DECODERS])
@pytest.mark.parametrize("init", list(MIN_RANK))
def test_start_equals_the_fixed_operator(family, init):
    _, adapter, src, config = _grown(family)
    tgt = adapter.dims(config)
    reference = _reference(src, tgt, MangoOperator(src, tgt, rank=MIN_RANK[init], init=init, noise=0.0, seed=1, split="even"), init)
    for rank in (MIN_RANK[init], 3):
        out = MangoOperator(src, tgt, rank=rank, init=init, noise=0.0, seed=1, split="even").materialize()
        for name, t in out.tensors.items():
            assert (t - reference.tensors[name]).abs().max() < 1e-12, (name, rank)
    if init == "exact":  # bit for bit, in every role
        out = MangoOperator(src, tgt, rank=2, init=init, noise=0.0, split="even").materialize()
        assert all(torch.equal(t, reference.tensors[n]) for n, t in out.tensors.items())


def test_a_chunked_operator_equals_the_whole_one_and_keeps_its_workspace():
    _, adapter, src, config = _grown("gpt2")
    tgt = adapter.dims(config)
    whole, chunked = (MangoOperator(src, tgt, rank=2, seed=3, max_elements=m) for m in (2**30, 4096))
    assert ring_planning._largest_intermediate((tuple(chunked.m1.shape), *(tuple(c.shape) for c in chunked.cores()))) > 4096
    out_whole, out_chunked = whole(), chunked()
    assert all((out_chunked[n] - t).abs().max() < 1e-12 for n, t in out_whole.items())
    weights = {n: torch.randn_like(t) for n, t in out_whole.items()}
    grads = [torch.autograd.grad(sum((out[n] * w).sum() for n, w in weights.items()), op.cores())
             for op, out in ((whole, out_whole), (chunked, out_chunked))]
    assert all((c - w).abs().max() < 1e-12 * w.abs().max() for w, c in zip(*grads))
    assert not whole.workspace._buffers and len(chunked.workspace._buffers) == 4  # kept for the next call


def test_noise_breaks_symmetry_but_keeps_the_function():
    model, adapter, src, config = _grown("gpt2", {"hidden_size": 64})
    tgt = adapter.dims(config)
    quiet = MangoOperator(src, tgt, init="exact", noise=0.0).materialize()
    noisy = MangoOperator(src, tgt, init="exact", noise=0.01).materialize()
    assert (noisy.tensors["layer.mlp_out"] - quiet.tensors["layer.mlp_out"]).abs().max() > 1e-5
    big = adapter.from_canonical(noisy, config, type(model))
    inputs = model_inputs(model)
    assert (logits(big, inputs) - logits(model, inputs)).abs().max() < 1e-5  # big is built in fp32


@pytest.mark.parametrize("init,rank,message", [
    ("net2net", 1, "needs rank >= 2"),
    ("bert2bert", 1, "needs rank >= 2"),
    ("exact", 1, "needs rank >= 2"),
    ("ligo", 4, "cannot start from 'ligo'"),
    ("tile", 1, "unknown Mango init"),
    ("stackbert", 0, "positive integer"),
])
def test_unreachable_starts_are_refused(init, rank, message):
    _, adapter, src, config = _grown("gpt2")
    with pytest.raises(GrowError, match=message):
        MangoOperator(src, adapter.dims(config), rank=rank, init=init)


def test_exact_needs_an_integer_width_factor():
    _, adapter, src, config = _grown("gpt2", {"hidden_size": 48})
    with pytest.raises(GrowError, match="multiple"):
        MangoOperator(src, adapter.dims(config), rank=2, init="exact")


def test_unknown_option_is_refused():
    model = tiny_model("gpt2")
    with pytest.raises(GrowError, match=r"ranks= does not apply to mango"):
        growkit.grow(model, GROW, method="mango", data=[{}], ranks=2)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("rank", [1, 3])
def test_parameter_count_is_the_formula(family, rank):
    _, adapter, src, config = _grown(family)
    tgt = adapter.dims(config)
    op = MangoOperator(src, tgt, rank=rank, init="stackbert")  # the default start needs rank 2
    d, mlp = src.dims, {"gpt2": 2, "llama": 3}[family]  # GELU: in, out; SwiGLU: gate, up, down
    b1, b2 = 4 + mlp * math.ceil(d.ffn / d.hidden), 4 + mlp * math.ceil(tgt.ffn / tgt.hidden)
    formula = rank**2 * (b1 * b2 + 2 * d.hidden * tgt.hidden + d.layers * tgt.layers)
    assert sum(p.numel() for p in op.parameters()) == parameter_count(src, tgt, rank) == formula


@pytest.mark.parametrize("rank", [1, 2])
def test_dry_run_counts_the_materialisation_flops(rank):
    """The estimate cannot build Mango on the meta device; its path-cost count matches a measured materialisation."""
    from growkit.estimate import fit_estimate
    from growkit.flops import count_flops
    from growkit.ops import get_method

    model, adapter, src, config = _grown("gpt2")
    est = fit_estimate(get_method("mango"), model.config, config, seed=0, options={"rank": rank, "init": "stackbert"},
                       batch_size=2, seq_len=8, steps=10)
    assert not any("not counted" in note for note in est.notes)
    op = MangoOperator(src, adapter.dims(config), rank=rank, init="stackbert")
    with torch.no_grad():
        measured = count_flops(op.materialize)
    assert 0.8 < est.step_extra_flops / (3 * measured) < 1.25


# --- fitting --------------------------------------------------------------------
class Task:
    """An endless iterable of fresh batches (so ``fit`` never repeats one) and a fixed held-out set."""

    def __init__(self, family: str):
        self.family = family
        self.successors = torch.randint(5, 64, (64, 2), generator=torch.Generator().manual_seed(1234))
        if family == "vit":
            from sklearn.datasets import load_digits

            digits = load_digits()  # 8x8: the tiny ViT's image size, patch 4, 1 channel
            self.images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
            self.labels = torch.tensor(digits.target)

    def batch(self, gen: torch.Generator, held_out: bool = False, size: int = 16) -> dict:
        if self.family == "vit":
            split = 1500
            rows = torch.randint(0, split, (size,), generator=gen) + (split if held_out else 0)
            rows = rows.clamp(max=len(self.labels) - 1)
            return {"pixel_values": self.images[rows], "labels": self.labels[rows]}
        ids = torch.empty(size, 16, dtype=torch.long)  # a fixed sparse random Markov chain over 64 tokens
        ids[:, 0] = torch.randint(5, 64, (size,), generator=gen)
        for t in range(1, 16):
            ids[:, t] = self.successors[ids[:, t - 1], torch.randint(0, 2, (size,), generator=gen)]
        if self.family != "bert":
            return {"input_ids": ids, "labels": ids}
        chosen = torch.rand(ids.shape, generator=gen) < 0.15  # MLM: predict 15% of tokens, masked with id 4
        return {"input_ids": torch.where(chosen, 4, ids), "labels": torch.where(chosen, ids, -100)}

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        while True:
            yield self.batch(gen)

    def held_out(self, n: int = 4) -> list[dict]:
        gen = torch.Generator().manual_seed(10_000)
        return [self.batch(gen, held_out=True) for _ in range(n)]


def _loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model(**b).loss.item() for b in batches) / len(batches)


def _pretrained(family: str, task: Task, steps: int = 150):
    model = tiny_model(family)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for batch, _ in zip(task, range(steps)):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("family,rank", [("gpt2", 1), ("bert", 1), ("vit", 1), ("llama", 2),
                                         *((family, 1) for family in DECODERS)])
def test_fit_lowers_held_out_loss_and_trains_only_the_cores(family, rank, tmp_path):
    task = Task(family)
    source, held_out = _pretrained(family, task), task.held_out(16)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    grown, result = growkit.grow(
        source, GROW, method="mango", rank=rank, init="stackbert", data=task, steps=30,  # a start that loses something
        fit_config=FitConfig(steps=30, lr=1e-3, warmup=3, progress=False), return_fit=True,
    )
    op = result.operator
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())
    assert [n for n, _ in op.named_parameters()] == ["s_b", "s_i", "s_o", "s_l"]
    start = adapter_for(source).from_canonical(
        MangoOperator(adapter_for(source).to_canonical(source), op.target_dims, rank=rank, init="stackbert").materialize(),
        grown.config, type(grown),
    )
    assert _loss(grown, held_out) < _loss(start, held_out)
    # the saved model computes what the operator computed at the end of the fit
    grown.save_pretrained(tmp_path)
    loaded = type(grown).from_pretrained(tmp_path).eval()
    adapter = adapter_for(grown)
    with torch.no_grad():
        params = adapter.hf_state_dict(op(), grown, op.source_meta.tied, op.source_meta.extra)
        inputs = model_inputs(grown)
        expected = functional_call(grown, params, args=(), kwargs=inputs, strict=False).logits
    assert (logits(loaded, inputs) - expected).abs().max() < 1e-6
    assert (tmp_path / "model.safetensors").exists()
    if family == "gpt2":
        assert loaded.config.tie_word_embeddings
        assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


def test_every_core_gets_gradients_at_a_rank_above_the_start():
    model, adapter, src, config = _grown("gpt2", dtype=torch.float32)
    op = MangoOperator(src, adapter.dims(config), rank=2, init="stackbert")
    template = adapter.from_canonical(op.materialize(), config, type(model))
    batch = Task("gpt2").held_out(1)[0]
    fit(op, template, adapter, [batch], FitConfig(steps=2, progress=False))  # step 1 wakes the zero S_B slices
    op.zero_grad()
    params = adapter.hf_state_dict(op(), template, op.source_meta.tied, op.source_meta.extra)
    functional_call(template, params, args=(), kwargs=batch, strict=False).loss.backward()
    for name, core in op.named_parameters():
        assert (core.grad[1, :, :, 1] != 0).any(), name  # the extra ring slice learns


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_keep_split_silences_the_new_copies_and_keeps_the_function(family):
    model, adapter, src, config = _grown(family, {"hidden_size": 64, "num_hidden_layers": 4})
    tgt = adapter.dims(config)
    even = MangoOperator(src, tgt, init="exact", noise=0.0, split="even").materialize()
    op = MangoOperator(src, tgt, init="exact", noise=0.0, split="keep")
    keep = op.materialize()
    f1 = src.dims.ffn
    assert keep.tensors["layer.mlp_out"][:, f1:].abs().max() == 0  # new FFN units write nothing yet
    assert keep.tensors["layer.mlp_out"][:, :f1].abs().max() > 0
    mlp_in = keep.tensors["layer.mlp_in"]  # new units read what their source unit reads
    assert torch.equal(mlp_in[..., f1:], mlp_in[..., : tgt.ffn - f1])
    assert (mlp_in - even.tensors["layer.mlp_in"]).abs().max() > 0  # the residual's copies are read once
    inputs = model_inputs(model)
    big = adapter.from_canonical(keep, config, type(model))
    assert (logits(big, inputs) - logits(model, inputs)).abs().max() < 1e-5  # big is built in fp32
    with pytest.raises(GrowError, match="split must be one of"):
        MangoOperator(src, tgt, split="half")


def test_the_default_takes_the_start_with_no_data_and_keeps_the_function():
    """Mango's default fits nothing (measured best): grow() needs no data and returns the start."""
    model = tiny_model("llama", seed=3)
    grown, result = growkit.grow(model, {"hidden_size": 128, "num_hidden_layers": 4}, "mango", return_fit=True)
    assert result.losses == [] and result.held_out == []
    adapter = adapter_for(model)
    start = MangoOperator(adapter.to_canonical(model), adapter.dims(grown.config), seed=0).materialize()
    tensors = adapter.to_canonical(grown).tensors
    assert tensors.keys() == start.tensors.keys()
    assert all(torch.equal(tensors[name], start.tensors[name]) for name in tensors)
    inputs = model_inputs(model)  # whole factors: every unit copied equally often keeps RMSNorm's mean square
    assert (logits(grown, inputs) - logits(model, inputs)).abs().max() < 1e-4
    with pytest.raises(GrowError, match="needs data"):  # asking for a fit still needs data
        growkit.grow(model, {"hidden_size": 128}, "mango", steps=5)
    batches = [{"input_ids": inputs["input_ids"], "labels": inputs["input_ids"]}]
    with pytest.raises(GrowError, match=r"by default takes its start and fits nothing, so data= would be ignored"):
        growkit.grow(model, {"hidden_size": 128, "num_hidden_layers": 4}, "mango", data=batches)
    on_purpose = growkit.grow(model, {"hidden_size": 128, "num_hidden_layers": 4}, "mango", data=batches, steps=0)
    assert all(torch.equal(a, b) for a, b in zip(on_purpose.state_dict().values(), grown.state_dict().values()))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_mixed_inputs_set_the_new_units_apart_and_keep_the_function(family):
    model, adapter, src, config = _grown(family, {"hidden_size": 64, "num_hidden_layers": 4})
    tgt = adapter.dims(config)
    copies = MangoOperator(src, tgt, init="exact", noise=0.0).materialize()
    op = MangoOperator(src, tgt, init="exact", mix=1.0)
    assert op.rank == 3 and op.copy_map is None  # the mixture is a third Kronecker term
    mixed = op.materialize()
    f1, new = src.dims.ffn, slice(src.dims.ffn, None)
    mlp_in, copied = mixed.tensors["layer.mlp_in"], copies.tensors["layer.mlp_in"]
    assert torch.equal(mlp_in[..., :f1], copied[..., :f1])  # the source's units are untouched
    change = (mlp_in[..., new] - copied[..., new]).norm() / copied[..., new].norm()
    assert 0.5 < change < 2  # about one unit's inputs more
    for name in ("layer.q", "layer.o", "layer.mlp_out"):  # q places the embeddings and norms; o and mlp_out write
        assert torch.equal(mixed.tensors[name], copies.tensors[name]), name
    assert (mixed.tensors["layer.v"] - copies.tensors["layer.v"]).abs().max() > 0
    inputs = model_inputs(model)
    big = adapter.from_canonical(mixed, config, type(model))
    assert (logits(big, inputs) - logits(model, inputs)).abs().max() < 1e-5  # big is built in fp32
    for options, message in (({"split": "even"}, "needs split='keep'"), ({"noise": 0.01}, "replaces the cancelling"),
                             ({"mix": -1.0}, "0 or more")):
        with pytest.raises(GrowError, match=message):
            MangoOperator(src, tgt, **{"mix": 1.0, **options})


@pytest.mark.parametrize("n_old,n_new", [(4, 8), (4, 6), (3, 10)])
def test_random_copies_are_drawn_without_replacement(n_old, n_new):
    """Mango's selection: units copied floor or ceil(n_new / n_old) times, so whole factors keep the norms exact."""
    from growkit.ops.width import _select

    index = _select(n_old, n_new, "balanced", torch.Generator().manual_seed(0))
    assert torch.equal(index[:n_old], torch.arange(n_old))  # the old units first
    counts = torch.bincount(index, minlength=n_old)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n_new


def test_the_default_mixes_only_where_there_are_silent_units_and_room():
    _, adapter, src, config = _grown("gpt2", {"num_hidden_layers": 4})  # depth only: no new units
    assert MangoOperator(src, adapter.dims(config)).rank == 2
    _, adapter, src, config = _grown("gpt2")
    tgt = adapter.dims(config)
    assert MangoOperator(src, tgt).rank == 3  # the start's two terms and the mixing term
    assert MangoOperator(src, tgt, rank=2).rank == 2  # no room: no mixing
    assert MangoOperator(src, tgt, noise=0.01).rank == 2 and MangoOperator(src, tgt, split="even").rank == 2
    assert parameter_count(src, tgt) == sum(p.numel() for p in MangoOperator(src, tgt).parameters())
