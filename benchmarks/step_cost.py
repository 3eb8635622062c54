"""What a tiny benchmark training step costs: steps/s, FLOP/s against a plain matmul, where the time goes,
what torch.compile changes, and what an evaluation costs.

The shapes are the benchmark's: a preset's target (default GPT-2 tiny, 4L/128, BPE 2048, batch 16 x 64)
trained by the loop's own step (forward, backward, clipping, fused AdamW). In one process:

1. a plain fp32 matmul (N x N x N, best of 5) before and after, the reference FLOP/s;
2. the eager step: steps/s on the wall clock and on this process's CPU clock (single-threaded,
   the CPU clock is what an idle machine's wall clock would read), and the analytic FLOPs per
   step divided by the step time, as a fraction of the matmul's FLOP/s;
3. torch.compile of the model: its compile time, steps/s, and the losses of the same steps from
   the same weights against eager (max relative difference);
4. torch.profiler over a few eager steps, the self CPU time grouped by kind of op;
5. one evaluation (the preset's eval batches) in steps' worth of time.

    python benchmarks/step_cost.py --threads 1
    python benchmarks/step_cost.py --threads 1 --family llama --no-compile
"""
from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
import time
from pathlib import Path
from collections import defaultdict

import torch

from growkit.bench import BenchSpec, get_preset
from growkit.bench.runner import load_data
from growkit.flops import flops_per_batch
from growkit.io import model_class
from growkit.train import TrainConfig, evaluate, make_optimizer

#: profiler op names by kind (anything else is "other")
KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product", "aten::softmax", "aten::_softmax", "aten::_softmax_backward_data"),
    "norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::rsqrt", "aten::pow", "aten::mean"),
    "loss": ("aten::log_softmax", "aten::_log_softmax", "aten::nll_loss", "aten::cross_entropy",
             "aten::_log_softmax_backward_data", "aten::nll_loss_backward", "aten::nll_loss_forward"),
    "embedding": ("aten::embedding", "aten::embedding_dense_backward", "aten::embedding_backward"),
    "optimizer": ("aten::_fused_adamw_",),
    "clip": ("aten::_foreach_norm", "aten::linalg_vector_norm", "aten::_foreach_mul_", "aten::clamp"),
    "activation": ("aten::gelu", "aten::gelu_backward", "aten::tanh", "aten::silu", "aten::silu_backward",
                   "aten::tanh_backward"),
}


def matmul_flops_per_s(n: int, repeats: int = 5) -> float:
    """FLOP/s of an N x N x N fp32 matmul on this process's CPU clock (best of ``repeats``), like the steps'."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b)[1] for _ in range(repeats))
    return 2 * n ** 3 / best


def _time(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def make_step(model: torch.nn.Module, cfg: TrainConfig):
    """The training loop's step without its bookkeeping; returns the loss tensor."""
    optimizer = make_optimizer(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch: dict) -> torch.Tensor:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def timed_steps(step, batches: list[dict]) -> tuple[float, float, list[float]]:
    """Wall and CPU seconds per step over ``batches``, and the losses."""
    losses = []

    def run() -> None:
        losses.extend(step(b).item() for b in batches)

    wall, cpu = _time(run)
    return wall / len(batches), cpu / len(batches), losses


def profile(step, batches: list[dict]) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Self CPU time per kind of op, and of the costliest ops in "other" (seconds per step)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            step(b)
    kinds: dict[str, float] = defaultdict(float)
    other = []
    for event in prof.key_averages():
        kind = next((k for k, names in KINDS.items() if event.key.startswith(names)), "other")
        seconds = event.self_cpu_time_total / 1e6 / len(batches)
        kinds[kind] += seconds
        if kind == "other":
            other.append((event.key, seconds))
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])), sorted(other, key=lambda kv: -kv[1])[:6]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="gpt2", choices=("gpt2", "llama", "bert"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--matmul", type=int, default=1024, help="the reference matmul's size N")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    preset = get_preset(args.family, args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_data(BenchSpec(preset), Path(tmp))
    source = preset.source_config(vocab_size=len(data.tokenizer))
    config = preset.target_config(source)
    torch.manual_seed(0)
    init = model_class(config)(config).train()
    cfg = TrainConfig()
    batches = list(itertools.islice(data.train_batches(0), args.steps + 3))
    warm, timed = batches[:3], batches[3:]
    step_flops = flops_per_batch(config, timed[0])

    before = matmul_flops_per_s(args.matmul)
    eager = make_step(copy.deepcopy(init), cfg)
    for b in warm:
        eager(b)
    e_wall, e_cpu, e_losses = timed_steps(eager, timed)
    kinds, other = profile(eager, timed[:5])
    model = copy.deepcopy(init).eval()
    eval_wall, eval_cpu = _time(lambda: evaluate(model, data.eval_batches, torch.device("cpu")))

    compiled = None
    if not args.no_compile:
        c_step = make_step(torch.compile(copy.deepcopy(init)), cfg)
        compile_s = _time(lambda: [c_step(b) for b in warm])[0]
        c_wall, c_cpu, _ = timed_steps(c_step, timed)
        # the same steps from the same weights, eager against compiled
        e_ref = make_step(copy.deepcopy(init), cfg)
        c_ref = make_step(torch.compile(copy.deepcopy(init)), cfg)
        a = [e_ref(b).item() for b in batches]
        c = [c_ref(b).item() for b in batches]
        diff = max(abs(x - y) / abs(x) for x, y in zip(a, c))
        compiled = (compile_s, c_wall, c_cpu, diff)
    after = matmul_flops_per_s(args.matmul)
    reference = max(before, after)

    print(f"{args.family} {preset.name} target {preset.target} ({sum(p.numel() for p in init.parameters()):,} "
          f"parameters), batch {preset.batch_size} x {preset.seq_len}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")
    print(f"plain fp32 matmul {args.matmul}^3 (CPU clock): {before / 1e9:.1f} GFLOP/s before, {after / 1e9:.1f} after")
    print(f"analytic FLOPs per training step: {step_flops:.4g}")
    print(f"{'variant':10}{'ms/step wall':>14}{'ms/step CPU':>13}{'steps/s (CPU)':>15}{'GFLOP/s (CPU)':>15}{'of matmul':>11}")
    rows = [("eager", e_wall, e_cpu)] + ([("compiled", compiled[1], compiled[2])] if compiled else [])
    for name, wall, cpu in rows:
        rate = step_flops / cpu
        print(f"{name:10}{wall * 1e3:14.1f}{cpu * 1e3:13.1f}{1 / cpu:15.2f}{rate / 1e9:15.2f}{rate / reference:11.1%}")
    if compiled:
        print(f"torch.compile: {compiled[0]:.1f} s to compile (3 warm-up steps); eager/compiled CPU time "
              f"{e_cpu / compiled[2]:.3f}x; losses of {len(batches)} steps from the same weights differ by at most "
              f"{compiled[3]:.2e} (relative)")
    total = sum(kinds.values())
    print(f"self CPU time per eager step under torch.profiler ({total * 1e3:.1f} ms with the profiler's overhead):")
    for kind, seconds in kinds.items():
        print(f"  {kind:12}{seconds * 1e3:8.1f} ms  {seconds / total:6.1%}")
    print("  costliest in other: " + ", ".join(f"{name} {seconds / total:.1%}" for name, seconds in other))
    evals = preset.budget.steps // preset.budget.eval_every + 1
    print(f"one evaluation ({len(data.eval_batches)} batches): {eval_cpu * 1e3:.0f} ms CPU = {eval_cpu / e_cpu:.1f} "
          f"steps; {evals} evaluations per {preset.budget.steps}-step run = "
          f"{evals * eval_cpu / (preset.budget.steps * e_cpu):.1%} of its training time")


if __name__ == "__main__":
    main()
