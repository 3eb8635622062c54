"""Mango operator cost at real sizes: parameters, time, peak memory, FLOPs, GFLOP/s.

Shapes: DeiT-S -> DeiT-B (12 layers, hidden 384 -> 768, FFN x4) and GPT-2 small ->
medium (12 layers / 768 -> 24 layers / 1024), at ranks 1, 2, 4, 8. Each case runs
in its own process, so its peak memory is its own (VmHWM, reset with
/proc/self/clear_refs before each phase, minus the resident size before it).
Per case:

- the parameter count (counted and by formula);
- ``materialize`` (no grad), ``forward`` (graph built) and forward + backward
  (cotangent ones on every target tensor) of the whole operator, and forward +
  backward of the bare M1 -> M2 contraction (skipped with ``--whole-only``: the
  whole operator also holds the unpacked target tensors and their cotangents);
- the FLOPs of all its ring contractions (opt_einsum's path cost; backward is
  counted as twice the forward) and the GFLOP/s achieved;
- a plain fp32 3072^3 matmul's GFLOP/s (best of 5), measured in the same process
  before and after the case, the higher kept (load from other processes hits both);
- with ``--naive-ranks``: the bare M1 contraction without grad, interleaved
  ``--repeats`` times (best of each): growkit's (chosen order, planned layout),
  the naive order (the cores one at a time: I, O, L, B) and the chosen order,
  both as opt_einsum runs them with torch.einsum, and the naive order with
  growkit's layout planner (to separate what the order and the layout each give).

Memory target: peak of the contraction's forward + backward <= 3 (|M1| + R^2 |M2|)
floats; a peak reported adds |M1| (allocated with the operator, before the
phase) to the phase's own growth. Cases above ``--max-tflop`` (forward) are not run: their
FLOPs and an estimate from the measured throughput are printed instead.

``--reuse-memory`` runs the cases with glibc's mmap off and no trimming
(``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_``), so freed intermediates are
reused instead of faulted in fresh, which is slow on some VMs. Peaks then read low:
memory kept from an earlier phase is not counted as growth. Use it for times only.

    nohup python benchmarks/mango_operator.py --out mango.json > mango.log 2>&1 &
    python benchmarks/mango_operator.py --shapes deit --ranks 1 2 --naive-ranks 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import opt_einsum as oe
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification

from growkit.arch import adapter_for
from growkit.ops.mango import MangoOperator, parameter_count
from growkit.ops.ring.execute import MAX_ELEMENTS, ring_map, run_plan
from growkit.ops.ring.plan import chain_plan, ring_equation, ring_path

GB = 2**30
#: the naive order as opt_einsum path steps over (M1, S_B, S_I, S_O, S_L): I, then O, then L, then B
NAIVE_PATH = [(0, 2), (1, 3), (1, 2), (0, 1)]
NAIVE_ORDER = (1, 2, 3, 0)  #: the same order as core indices (S_B, S_I, S_O, S_L), for growkit's layout planner
#: glibc settings that keep freed memory in the process (no mmap for large blocks, no trimming)
REUSE_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(2**28)}
SHAPES = {
    "deit": (
        lambda: ViTForImageClassification(
            ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, num_labels=1000)
        ),
        {"hidden_size": 768},
    ),
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12)), {"hidden_size": 1024, "num_hidden_layers": 24}),
}


def memory() -> tuple[float, float]:
    """(resident, peak resident) of this process in bytes."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return float(fields["VmRSS"].split()[0]) * 1024, float(fields["VmHWM"].split()[0]) * 1024


def reset_peak() -> float:
    """Reset the peak to the current resident size and return that size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return memory()[0]


def timed(fn) -> tuple[float, float, object]:
    """(seconds, peak growth in bytes, result) of ``fn()``."""
    base = reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return seconds, memory()[1] - base, result


def matmul_gflops(n: int = 3072, repeats: int = 5) -> float:
    """A plain fp32 matmul's GFLOP/s, best of ``repeats`` (the machine's rate when nothing interferes)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def sizes(shape: str, rank: int) -> dict:
    """Everything about a case that needs no contraction: shapes, parameters, FLOPs."""
    model = SHAPES[shape][0]()
    adapter = adapter_for(model)
    source = adapter.to_canonical(model)
    target = adapter.dims(adapter.target_config(model.config, SHAPES[shape][1]))
    return {"source": source, "target": target, "params": parameter_count(source, target, rank)}


def run_case(shape: str, rank: int, mode: str, max_elements: int, repeats: int = 2) -> dict:
    """Measure one case; ``mode`` is "full", "naive" (full plus the naive comparison), "whole" (full
    without the bare contraction) or "probe" (materialize only)."""
    info = sizes(shape, rank)
    source, target = info["source"], info["target"]
    reference = matmul_gflops()
    # a one-term start (stackbert, the rows' start before net2net became the default), so rank 1 runs too
    op = MangoOperator(source, target, rank=rank, init="stackbert", seed=0, max_elements=max_elements)
    m1, m2_numel = op.m1, op.tgt.blocks * target.hidden**2 * target.layers
    flops = sum(float(ring_path(tuple(x.shape), [tuple(c.shape) for c in cores]).opt_cost) for x, cores in op.contractions())
    m1_path = ring_path(tuple(m1.shape), [tuple(c.shape) for c in op.cores()])
    row = {
        "shape": shape,
        "rank": rank,
        "params": sum(p.numel() for p in op.parameters()),
        "params_formula": info["params"],
        "B1": op.src.blocks,
        "B2": op.tgt.blocks,
        "M1": m1.numel(),
        "M2": m2_numel,
        "flops_forward": flops,
        "flops_m1": float(m1_path.opt_cost),
        "largest_intermediate": int(m1_path.largest_intermediate),
        "chunked": int(m1_path.largest_intermediate) > max_elements,
        "matmul_gflops": reference,
    }
    row["materialize_s"], peak, _ = timed(op.materialize)
    row["materialize_peak_gb"] = peak / GB
    row["materialize_gflops"] = flops / row["materialize_s"] / 1e9
    if mode != "probe":
        _time_backward(op, row, mode, max_elements)
    if mode == "naive":
        _time_naive(op, m1_path.path, row, max_elements, repeats)
    # measured again after the case; the higher (stricter) reference is kept
    row["matmul_gflops"] = max(reference, matmul_gflops())
    row["vs_matmul"] = row["materialize_gflops"] / row["matmul_gflops"]
    if "fwd_bwd_gflops" in row:
        row["fwd_bwd_vs_matmul"] = row["fwd_bwd_gflops"] / row["matmul_gflops"]
    return row


def _time_backward(op: MangoOperator, row: dict, mode: str, max_elements: int) -> None:
    m1, flops = op.m1, row["flops_forward"]
    floats = m1.numel() + row["rank"] ** 2 * row["M2"]
    row["fwd_bwd_s"], peak, _ = timed(lambda: _forward_backward(op, row))
    row["fwd_bwd_peak_gb"] = (peak + m1.numel() * 4) / GB
    row["fwd_bwd_peak_vs_target"] = (peak + m1.numel() * 4) / (3 * floats * 4)
    row["fwd_bwd_gflops"] = 3 * flops / row["fwd_bwd_s"] / 1e9
    if mode == "whole":
        return
    row["contract_fwd_bwd_s"], peak, _ = timed(lambda: _contract_backward(m1, op.cores(), max_elements))
    row["contract_fwd_bwd_peak_gb"] = (peak + m1.numel() * 4) / GB
    row["contract_fwd_bwd_peak_vs_target"] = (peak + m1.numel() * 4) / (3 * floats * 4)


def _time_naive(op: MangoOperator, path: list, row: dict, max_elements: int, repeats: int) -> None:
    """The bare M1 contraction without grad: growkit's against the naive order, and each half of the difference."""
    m1 = op.m1
    eq, cores = ring_equation(0, 4), [c.detach() for c in op.cores()]
    row["naive_flops"] = float(oe.contract_path(eq, m1, *cores, optimize=NAIVE_PATH)[1].opt_cost)
    shapes = tuple(tuple(t.shape) for t in (m1, *cores))
    naive_plan = chain_plan(shapes, NAIVE_ORDER)
    variants = {  # interleaved, so that load from other processes hits all alike
        "contract": lambda: ring_map(m1, cores, max_elements),
        "naive": lambda: oe.contract(eq, m1, *cores, optimize=NAIVE_PATH, backend="torch"),
        "contract_einsum": lambda: oe.contract(eq, m1, *cores, optimize=path, backend="torch"),
        "naive_planned": lambda: run_plan(naive_plan, m1, cores),
    }
    times: dict[str, list] = {name: [] for name in variants}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in variants.items():
                times[name].append(timed(fn)[:2])
    for name, runs in times.items():
        row[f"{name}_s"] = min(t for t, _ in runs)
        row[f"{name}_peak_gb"] = runs[0][1] / GB
    row["contract_gflops"] = row["flops_m1"] / row["contract_s"] / 1e9
    row["naive_gflops"] = row["naive_flops"] / row["naive_s"] / 1e9
    row["speedup_vs_naive"] = row["naive_s"] / row["contract_s"]
    row["speedup_of_order"] = row["naive_planned_s"] / row["contract_s"]  # same executor, orders differ
    row["speedup_of_layout"] = row["contract_einsum_s"] / row["contract_s"]  # same order, executors differ


def _forward_backward(op: MangoOperator, row: dict) -> None:
    start = time.perf_counter()
    out = [t for t in op().values() if t.requires_grad]
    row["forward_s"] = time.perf_counter() - start
    torch.autograd.backward(out, [torch.ones_like(t) for t in out])


def _contract_backward(m1: torch.Tensor, cores: list[torch.Tensor], max_elements: int) -> None:
    """The bare M1 contraction, forward and backward (cotangent ones), gradients for fresh copies of the cores."""
    cores = [c.detach().requires_grad_() for c in cores]
    m2 = ring_map(m1, cores, max_elements)
    m2.backward(torch.ones_like(m2))


def estimate(shape: str, rank: int, gflops: float, max_elements: int) -> dict:
    """FLOPs, parameters and a time estimate for a case that is not run."""
    info = sizes(shape, rank)
    source, target = info["source"], info["target"]
    op = MangoOperator(source, target, rank=1, init="stackbert", seed=0)  # rank 1 for the shapes only
    r = rank
    m1_shape = tuple(op.m1.shape)
    cores = [(r, *c.shape[1:3], r) for c in op.cores()]
    path = ring_path(m1_shape, cores)
    flops = float(path.opt_cost)
    m2 = op.tgt.blocks * target.hidden**2 * target.layers
    chunked = int(path.largest_intermediate) > max_elements
    return {
        "shape": shape,
        "rank": rank,
        "estimate": True,
        "params": info["params"],
        "flops_m1": flops,
        "largest_intermediate": int(path.largest_intermediate),
        "chunked": chunked,
        "target_peak_gb": 3 * (op.m1.numel() + r * r * m2) * 4 / GB,
        "est_forward_s": flops / (gflops * 1e9),
        "est_fwd_bwd_s": (4 if chunked else 3) * flops / (gflops * 1e9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--naive-ranks", nargs="*", type=int, default=[4], help="ranks at which to time the naive order (DeiT only)")
    parser.add_argument("--max-tflop", type=float, default=12.0, help="skip (estimate) cases whose forward exceeds this")
    parser.add_argument("--probe", action="store_true", help="still time materialize (only) for the skipped cases")
    parser.add_argument("--max-elements", type=int, default=MAX_ELEMENTS, help="chunk above this intermediate size")
    parser.add_argument("--repeats", type=int, default=2, help="timings of the naive comparison (best of)")
    parser.add_argument("--whole-only", action="store_true", help="skip the bare contraction's forward + backward (long cases)")
    parser.add_argument("--reuse-memory", action="store_true", help="glibc keeps freed memory for reuse (times only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: SHAPE:RANK:MODE, run in a child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        shape, rank, mode = args.case.split(":")
        print(json.dumps(run_case(shape, int(rank), mode, args.max_elements, args.repeats)), flush=True)
        return
    env = {**os.environ, **(REUSE_MEMORY if args.reuse_memory else {})}
    rows = []
    for shape in args.shapes:
        measured: list[float] = []  # this shape's whole-operator GFLOP/s, for the estimates
        for rank in args.ranks:
            row = {}
            if estimate(shape, rank, 1.0, args.max_elements)["flops_m1"] / 1e12 > args.max_tflop:
                rate = sorted(measured)[len(measured) // 2] if measured else 30.0
                row = estimate(shape, rank, rate, args.max_elements)
                mode = "probe" if args.probe else None
            else:
                mode = "naive" if shape == "deit" and rank in args.naive_ranks else "whole" if args.whole_only else "full"
            if mode:
                cmd = [sys.executable, __file__, "--case", f"{shape}:{rank}:{mode}", "--threads", str(args.threads),
                       "--max-elements", str(args.max_elements), "--repeats", str(args.repeats)]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    row["error"] = done.stderr.strip().splitlines()[-1:]
                else:
                    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                    measured.append(row["materialize_gflops"])
            rows.append({"shape": shape, "rank": rank, **row})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
