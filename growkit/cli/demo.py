"""``growkit demo``: the main job on the embedded default, with no downloads and no arguments.

A reduced tiny GPT-2 savings benchmark: pretrain a 2-layer/64 GPT-2 on the
built-in corpus, grow it to 4 layers/128 with bert2BERT, LiGO and Mango (when
registered), train each and a scratch model identically, and print how much
compute each growth saved. The runs go to two worker processes; about 3.5
minutes on 2 idle CPU cores. The small model and the trained grown models are
kept, and their folders printed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_METHODS = ("scratch", "bert2bert", "ligo", "mango")
DEMO_JOBS = 2  #: worker processes: on two cores, two one-thread runs beat one two-thread run on these tiny models


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="grow a small built-in GPT-2 with bert2BERT, LiGO and Mango and measure the savings (~5 min on 2 cores)",
        description=(
            "Pretrain a small GPT-2 (2 layers, 64 wide) on the built-in corpus, grow it to 4 layers, 128 wide with\n"
            "bert2BERT, LiGO and Mango, train each grown model and a from-scratch one the same way, and print how\n"
            "much compute each needs to reach the scratch model's final loss. No downloads; about 3.5 minutes on 2\n"
            "idle CPU cores, with a progress line every 10 s. A rerun with the same --out reuses finished runs\n"
            "(--redo trains them again). The small model and the trained grown models stay in --out. For the full\n"
            "comparison see `growkit bench`."
        ),
        epilog="example:\n  growkit demo\n  growkit demo --out runs/my-demo --redo",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--jobs", type=int, default=DEMO_JOBS,
                   help=f"worker processes for the runs (default {DEMO_JOBS}; the results do not depend on it)")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default 1)")
    p.add_argument("--redo", action="store_true", help="train finished runs again instead of reusing them")
    p.set_defaults(func=run)


def demo_spec(seed: int = 0, threads: int | None = None, jobs: int = DEMO_JOBS, redo: bool = False):
    from ..bench import BenchSpec
    from ..bench.presets import demo_preset

    return BenchSpec(demo_preset(), methods=list(DEMO_METHODS), seeds=[seed], threads=threads, jobs=jobs, redo=redo,
                     progress=True, keep_models=True)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench
    from ..bench.report import PLOTS, text_paired, text_table, warnings, write_report
    from ..bench.load import cores
    from ..bench.runner import Runner
    from ..core.errors import GrowError

    if args.threads is not None and args.threads < 1:
        raise GrowError("--threads must be at least 1")
    if args.jobs < 1:
        raise GrowError("--jobs must be at least 1")
    spec = demo_spec(args.seed, args.threads, args.jobs, args.redo)
    p = spec.preset
    print(f"growkit demo: GPT-2 {p.source} -> {p.target} on the built-in corpus; methods: {', '.join(DEMO_METHODS)}")
    print(f"the small model pretrains {p.source_budget.steps} steps; every target trains {p.budget.steps} steps; "
          f"ligo fits {p.fit_steps} steps first, mango takes its start; {spec.jobs} worker process(es)\n", flush=True)
    start = time.perf_counter()
    result = run_bench(spec, args.out, log=lambda line: print(line, flush=True))
    summary = write_report(result)
    print()
    print(text_table(summary))
    paired = text_paired(summary)
    if paired:
        print(f"\n{paired}")
    print(f"\nFLOP savings = 1 - (FLOPs to reach scratch's final loss {list(summary['target_loss'].values())[0]:.3f}, "
          "the operator's fit included) / (scratch's FLOPs to reach it).")
    notes = warnings(summary)
    for line in notes:
        print(f"note: {line}")
    if notes:
        print("(the demo's budget is short on purpose; `growkit bench --preset tiny` is the measured comparison, "
              "see BENCHMARKS.md)")
    runner = Runner(spec, args.out)
    busy = [load["max"] for by_method in summary["busy_runs"].values() for load in by_method.values()]
    caveat = (f"; the load average reached {max(busy):.1f} on {cores()} cores, so this time measures the machine's "
              "other work too" if busy else "")
    print(f"\ndone in {time.perf_counter() - start:.0f} s ({len(result.trained)} runs trained now, the rest reused"
          f"{caveat})")
    print(f"small model:  {runner.source_dir(args.seed) / 'train' / 'final'}")
    for method in result.info["methods"]:
        if method != "scratch":
            print(f"grown ({method}, trained): {runner.run_dir(args.seed, method) / 'train' / 'final'}")
    print(f"scratch (trained): {runner.run_dir(args.seed, 'scratch') / 'train' / 'final'}")
    print(f"report: {args.out / 'report.md'}")
    print(f"plots:  {', '.join(str(args.out / name) for name in PLOTS)}")
    return 0
