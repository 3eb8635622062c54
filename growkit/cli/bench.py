"""``growkit bench``: the savings benchmark, from pretraining the source to the report and plots."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..core.errors import GrowError

DEFAULT_METHODS = "scratch,stackbert,interpolate,net2net,bert2bert,exact,ligo,mango"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure each growth method's FLOP and wall-time savings over training from scratch",
        description=(
            "Pretrain a small model (or reuse the one cached in OUT), grow it into the preset's target with each\n"
            "method, train every target (and scratch: a fresh random init) with the same schedule and data order,\n"
            "and report the compute each needs to reach scratch's final eval loss, the operator's fit included.\n"
            "OUT gets report.md, results.json (with paired differences against the best fixed baseline and the\n"
            "savings curve), loss_vs_flops.png, loss_vs_seconds.png and savings_curve.png. A rerun skips finished\n"
            "runs, so adding a method or a seed later trains only what is new (--redo reruns them). --jobs N\n"
            "runs the method x seed runs in N worker processes, with the same results as one.\n\n"
            "presets: smoke (seconds; a pipeline check), tiny (2-core CPU, ~30 min per family and seed),\n"
            "tiny-long (gpt2, llama, bert: tiny with a 2500-step target budget), small (for a GPU: 6L/256 -> 12L/512)."
        ),
        epilog=(
            "examples:\n"
            "  growkit bench --family gpt2 --preset tiny --seeds 2 --out runs/bench-gpt2-tiny\n"
            "  growkit bench --family gpt2 --preset tiny-long --seeds 3 --jobs 2 --progress\n"
            "  growkit bench --family vit --preset tiny --methods scratch,bert2bert,ligo --data digits\n"
            "  growkit bench --family gpt2 --preset tiny --methods scratch,mango,mango+rank=2,mango+fit_steps=300\n"
            "  growkit bench --family gpt2 --preset tiny --lr 1e-3 --out runs/bench-gpt2-tiny-lr1e-3\n"
            "  growkit bench --family gpt2 --preset tiny --grown-lr 1e-3 --methods scratch,net2net,mango "
            "--out runs/bench-gpt2-tiny-grown-lr1e-3"
        ),
    )
    p.add_argument("--family", default="gpt2",
                   help="model family: gpt2, bert, vit, llama or any other growkit supports (default gpt2)")
    p.add_argument("--preset", choices=("smoke", "tiny", "tiny-long", "small"), default="tiny",
                   help="sizes and budgets (default tiny)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated methods, or variants such as mango+rank=2 or ligo+fit_steps=300 "
                   f"(fit_steps, fit_lr, train_lr, train_warmup or a grow() option); scratch always runs "
                   f"(default {DEFAULT_METHODS})")
    p.add_argument("--seeds", default="1", help="number of seeds (0..N-1), or a comma-separated list such as 0,3 or 0, (seed 0 alone) (default 1)")
    p.add_argument("--out", type=Path, help="output folder (default runs/bench-<family>-<preset>)")
    p.add_argument("--data", help="text file or folder, or a tokens folder from `growkit tokenize` (gpt2, bert, "
                   "llama); 'digits' or a class-per-folder image "
                   "tree (vit); default: the embedded corpus, or digits for vit")
    g = p.add_argument_group("overrides (the training ones change every run, so use a new --out; to vary one "
                             "method's fit or options inside a benchmark, add a variant to --methods instead)")
    g.add_argument("--steps", type=int, help="every target's training steps")
    g.add_argument("--lr", type=float, help="every target's peak learning rate (the causal text families' tiny "
                   "presets: 3e-3, scratch's best in a sweep; --scratch-lr and --grown-lr split it)")
    g.add_argument("--scratch-lr", type=float, help="scratch's own peak learning rate (default: --lr or the preset's)")
    g.add_argument("--schedule", choices=("cosine", "linear", "constant"), help="every target's lr decay")
    g.add_argument("--grown-lr", type=float, help="every grown target's peak learning rate (default: the preset's "
                   "budget lr; a variant's train_lr= wins); one shared recipe for the grown models")
    g.add_argument("--grown-warmup", type=int, help="every grown target's warm-up steps (scratch keeps the preset's; "
                   "a variant's train_warmup= wins)")
    g.add_argument("--grown-decay-fraction", type=float, help="every grown target's lr decay reaches its floor at "
                   "this share of the steps and holds there (default: the preset's, 0.75 for the causal tiny and "
                   "tiny-long presets, else 1, the last step; 1 gives the grown targets scratch's schedule; a "
                   "variant's train_decay_fraction= wins)")
    g.add_argument("--source-steps", type=int, help="the source's pretraining steps")
    g.add_argument("--fit-steps", type=int, help="fit steps of the learned methods that fit by default (ligo; "
                   "mango takes its start unless a variant such as mango+fit_steps=100 says)")
    g.add_argument("--fit-lr", type=float, help="every learned operator's learning rate (default: each method's own, "
                   "1e-3 for ligo and 1e-4 for mango)")
    g.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="a grow() option for one method, e.g. mango:rank=2 or ligo:init=stackbert (repeatable)")
    g.add_argument("--device", choices=("cpu", "auto"), help="training device (default: the preset's; small uses auto)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the runs (each seed's source, then every method x seed); results do "
                   "not depend on it (default 1: all in this process)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads per process (default 1: the numbers then do not depend on --jobs)")
    p.add_argument("--redo", action="store_true", help="rerun finished runs instead of reusing them")
    p.add_argument("--keep-models", action="store_true", help="keep every trained target model (default: curves only)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--progress", action="store_true",
                   help="show progress of training and fitting: a bar on a terminal with --jobs 1, else a line every 10 s")
    p.set_defaults(func=run)


def parse_seeds(text: str) -> list[int]:
    try:
        listed = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise GrowError(f"--seeds takes a count or a comma-separated list of integers, not {text!r}") from None
    if "," in text:
        seeds = listed
    elif listed and listed[0] < 1:
        hint = "; to run seed 0 alone, write --seeds 0," if listed[0] == 0 else ""
        raise GrowError(f"--seeds {text} is a count of seeds and must be at least 1{hint}")
    else:
        seeds = list(range(listed[0])) if listed else []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise GrowError(f"--seeds must name distinct non-negative seeds, got {text!r}")
    return seeds


def parse_options(items: list[str]) -> dict[str, dict]:
    from ..bench.variants import parse_value  # imported here: growkit.bench loads torch, and --help must not wait

    options: dict[str, dict] = {}
    for item in items:
        method, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not (sep and eq and method and key):
            raise GrowError(f"--option takes METHOD:KEY=VALUE (e.g. mango:rank=2), not {item!r}")
        options.setdefault(method, {})[key] = parse_value(value)
    return options


def build_spec(args: argparse.Namespace):
    from ..bench import BenchSpec, get_preset
    from ..bench.variants import check_train

    preset = get_preset(args.family, args.preset)
    changes = {}
    for arg, key in (("steps", "budget_steps"), ("lr", "budget_lr"), ("schedule", "budget_schedule"),
                     ("source_steps", "source_budget_steps"), ("fit_steps", "fit_steps"), ("fit_lr", "fit_lr"),
                     ("device", "device")):
        value = getattr(args, arg, None)
        if value is not None:
            changes[key] = value
    if changes.get("budget_steps", 1) < 1 or changes.get("source_budget_steps", 1) < 1 or changes.get("fit_steps", 0) < 0:
        raise GrowError("--steps and --source-steps must be at least 1 and --fit-steps not negative")
    if any(changes.get(k, 1) <= 0 for k in ("budget_lr", "fit_lr")):
        raise GrowError("--lr and --fit-lr must be positive")
    if changes.get("budget_steps") is not None:  # keep the eval spacing sensible for a new budget
        changes["budget_eval_every"] = max(1, min(preset.budget.eval_every, changes["budget_steps"] // 10))
        changes["budget_warmup"] = min(preset.budget.warmup, max(1, changes["budget_steps"] // 10))
    options = parse_options(args.option)
    if options:
        changes["method_options"] = {**preset.method_options, **options}
    own = (("scratch_train", "--scratch-lr", {"train_lr": args.scratch_lr}),
           ("grown_train", "--grown-lr/--grown-warmup/--grown-decay-fraction",
            {"train_lr": args.grown_lr, "train_warmup": args.grown_warmup,
             "train_decay_fraction": args.grown_decay_fraction}))
    for key, flags, given in own:
        train = {k: v for k, v in given.items() if v is not None}
        if train:
            check_train(train, flags)
            changes[key] = {**getattr(preset, key), **train}  # a flag overrides its field, not the preset's others
    preset = preset.replace(**changes)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unused = sorted(set(options) - {m.split("+", 1)[0] for m in methods})
    if unused:
        raise GrowError(f"--option names {unused[0]}, which is not in --methods")
    if args.threads is not None and args.threads < 1:
        raise GrowError("--threads must be at least 1")
    if args.jobs < 1:
        raise GrowError("--jobs must be at least 1")
    return BenchSpec(preset, methods=methods, seeds=parse_seeds(args.seeds), data=args.data,
                     progress=bool(args.progress), threads=args.threads, keep_models=args.keep_models,
                     jobs=args.jobs, redo=args.redo)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench
    from ..bench.report import PLOTS, text_paired, text_table, warnings, write_report

    from .. import distributed
    from ..device import resolve_device

    spec = build_spec(args)
    out = args.out or Path("runs") / f"bench-{args.family}-{args.preset}"
    start = time.perf_counter()
    distributed.setup(resolve_device(spec.preset.device))  # under torchrun / accelerate launch: every run is distributed
    main = distributed.is_main()
    result = run_bench(spec, out, log=lambda line: print(line, flush=True) if main else None)
    if not main:  # rank 0 writes the report
        return 0
    summary = write_report(result, plots=not args.no_plots)
    print()
    print(text_table(summary))
    paired = text_paired(summary)
    if paired:
        print(f"\n{paired}")
    for line in warnings(summary):
        print(f"warning: {line}")
    print(f"\n{len(result.trained)} runs trained now, the rest reused; {time.perf_counter() - start:.0f} s")
    print(f"report: {out / 'report.md'}")
    if not args.no_plots:
        print(f"plots:  {', '.join(str(out / name) for name in PLOTS)}")
    return 0
