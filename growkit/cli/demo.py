"""``growkit demo``: the main job on the embedded default, with no downloads and no arguments.

A reduced tiny GPT-2 savings benchmark: pretrain a 2-layer/64 GPT-2 on the
built-in corpus, grow it to 4 layers/128 with bert2BERT, LiGO and Mango (when
registered), train each and a scratch model identically, and print how much
compute each growth saved. About 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_METHODS = ("scratch", "bert2bert", "ligo", "mango")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="grow a small built-in GPT-2 with bert2BERT, LiGO and Mango and measure the savings (~10 min on CPU)",
        description=(
            "Pretrain a small GPT-2 (2 layers, 64 wide) on the built-in corpus, grow it to 4 layers, 128 wide with\n"
            "bert2BERT, LiGO and Mango, train each grown model and a from-scratch one the same way, and print how\n"
            "much compute each needs to reach the scratch model's final loss. No downloads; about 10 minutes\n"
            "on 2 CPU cores. A rerun with the same --out reuses finished runs. For the full comparison see\n"
            "`growkit bench`."
        ),
        epilog="example:\n  growkit demo\n  growkit demo --out runs/my-demo --threads 1",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 is faster on a busy machine)")
    p.set_defaults(func=run)


def demo_spec(seed: int = 0, threads: int | None = None):
    from ..bench import BenchSpec, get_preset
    from ..bench.presets import demo_preset

    return BenchSpec(demo_preset(), methods=list(DEMO_METHODS), seeds=[seed], threads=threads)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench
    from ..bench.report import text_table, warnings, write_report
    from ..core.errors import GrowError

    if args.threads is not None and args.threads < 1:
        raise GrowError("--threads must be at least 1")
    spec = demo_spec(args.seed, args.threads)
    p = spec.preset
    print(f"growkit demo: GPT-2 {p.source} -> {p.target} on the built-in corpus; methods: {', '.join(DEMO_METHODS)}")
    print(f"every target trains {p.budget.steps} steps; learned operators fit {p.fit_steps} steps first\n", flush=True)
    start = time.perf_counter()
    result = run_bench(spec, args.out, log=lambda line: print(line, flush=True))
    summary = write_report(result)
    print()
    print(text_table(summary))
    print(f"\nFLOP savings = 1 - (FLOPs to reach scratch's final loss {list(summary['target_loss'].values())[0]:.3f}, "
          "the operator's fit included) / (scratch's FLOPs to reach it).")
    notes = warnings(summary)
    for line in notes:
        print(f"note: {line}")
    if notes:
        print("(the demo's budget is short on purpose; `growkit bench --preset tiny` is the measured comparison, "
              "see BENCHMARKS.md)")
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    print(f"report: {args.out / 'report.md'}")
    print(f"plots:  {args.out / 'loss_vs_flops.png'}, {args.out / 'loss_vs_seconds.png'}")
    return 0
