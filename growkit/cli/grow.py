"""``growkit grow``: read a save_pretrained folder, grow it, write the larger model."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..core.catalog import CATALOG, DEPTH_OPS, OPTION_NAMES, WIDTH_OPS, method_name
from ..core.errors import GrowError
from ..settings import FitConfig
from .common import (
    add_checkpoint_option,
    add_data_options,
    add_device_option,
    check_apart,
    check_batch_size,
    check_output_dir,
    checkpoint_interval,
    default_seq_len,
    describe,
    load_model,
    print_estimate,
    resolved_device,
    resume_hint,
    save_model,
    task_data,
)

SIZE_FLAGS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "ffn": "intermediate_size",
}
#: the options only a fixed method uses, and those only a learned method's fit uses (besides its own ``options``)
FIXED_OPTIONS = ("width", "depth")
FIT_OPTIONS = ("steps", "lr", "patience", "checkpoint_every", "device", "data", "batch_size", "seq_len")
#: what a learned method's fit uses when the options are not given
FIT_DEFAULTS = {"patience": FitConfig.patience, "device": "auto",
                "batch_size": 16}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "grow",
        help="grow a saved model into a larger one",
        description=(
            "Grow the model in SRC_DIR (a save_pretrained folder with model.safetensors) to the requested "
            "sizes and save it to OUT_DIR. Sizes left out keep head_dim, the FFN ratio and the kv group size. "
            "Tokenizer and preprocessor files are copied across."
        ),
        epilog=(
            "examples:\n"
            "  growkit grow small/ big/ --method exact --hidden 256 --layers 8\n"
            "  growkit grow small/ big/ --method stackbert --width aki --layers 8\n"
            "  growkit grow small/ big/ --method mango --layers 8 --hidden 256 --data corpus.txt --steps 100\n"
            "  growkit grow small/ big/ --method ligo --layers 8 --dry-run\n"
            "  torchrun --nproc_per_node 2 -m growkit grow small/ big/ --method ligo --layers 8   # a 2-process fit"
        ),
    )
    p.add_argument("src", metavar="SRC_DIR", help="source model folder (save_pretrained, safetensors)")
    p.add_argument("out", metavar="OUT_DIR", help="where to write the grown model (must be absent or empty)")
    p.add_argument("--method", default="exact",
                   help=f"growth method, any case: {', '.join(CATALOG)} (see `growkit methods`; default: exact)")
    sizes = p.add_argument_group("target sizes (at least one)")
    sizes.add_argument("--hidden", type=int, help="hidden size")
    sizes.add_argument("--layers", type=int, help="number of layers")
    sizes.add_argument("--heads", type=int, help="number of attention heads (default: hidden / head_dim)")
    sizes.add_argument("--kv-heads", type=int, help="number of key/value heads for GQA (default: keep the group size)")
    sizes.add_argument("--ffn", type=int, help="FFN inner size (default: keep the FFN ratio)")
    fixed = p.add_argument_group("fixed methods (a learned method refuses these)")
    fixed.add_argument("--width", choices=list(WIDTH_OPS), help="override the method's width operator")
    fixed.add_argument("--depth", choices=list(DEPTH_OPS), help="override the method's depth operator")
    p.add_argument("--noise", type=float, help="symmetry-breaking noise, relative to each matrix's std (every method; "
                   "for exact's zero-extended width, the std of the new inputs, default 1)")
    learned = p.add_argument_group("learned methods (ligo, mango; a fixed method refuses these)")
    learned.add_argument("--steps", type=int, help=f"fit steps (default: {CATALOG['ligo'].fit_steps} for ligo; "
                         f"{CATALOG['mango'].fit_steps} for mango: its function-preserving start, no data needed)")
    learned.add_argument("--lr", type=float, help=f"the operator's learning rate (default: {CATALOG['ligo'].fit_lr:g} "
                         f"for ligo, {CATALOG['mango'].fit_lr:g} for mango)")
    learned.add_argument("--patience", type=int,
                         help=f"stop the fit after this many held-out checks (at steps {FitConfig(steps=100).check_steps()} of "
                         f"a 100-step fit, on {FitConfig.eval_batches} batches held out from the data) without a new best, and keep the best "
                         f"operator, the start included; 0 turns the check off (default: {FIT_DEFAULTS['patience']})")
    learned.add_argument("--rank", type=int, help="Mango tensor-ring rank (mango only; default: the smallest that holds --init: 1, or 2 for net2net, bert2bert, exact)")
    learned.add_argument("--init", help="start from this operator (e.g. stackbert, net2net, bert2bert; "
                         "default: net2net for mango, LiGO's own stackbert_noisy for ligo)")
    learned.add_argument("--split", choices=("even", "keep"),
                         help="mango only: how the start shares a copied unit's outgoing weights: even (Net2Net's "
                         "1/copies) or keep (the original keeps them, new copies start silent; the default); both keep the function")
    learned.add_argument("--mix", type=float,
                         help="mango only: add to each new unit's key, value and FFN inputs a random mixture of its "
                         "source units' inputs, about X times one unit's; the new units start silent, so the start "
                         "keeps the function (needs --split keep; replaces --noise; default 2 under --split keep when "
                         "--noise is not given and --rank leaves room for its term, else 0)")
    add_device_option(learned, "the fit (the operator always computes in fp32)")
    add_checkpoint_option(learned, "fit (into OUT_DIR.partial/, removed once OUT_DIR is written)")
    add_data_options(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--dry-run", action="store_true",
                   help="print sizes, parameters (target and operator), a peak memory estimate and FLOPs; write nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR if it exists and is not empty (never the source folder, nor one inside or around it)")
    p.set_defaults(func=run, on_interrupt=on_interrupt)


def _options(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in OPTION_NAMES if getattr(args, name) is not None}


def partial_dir(out: Path) -> Path:
    """Where a learned method's fit keeps its checkpoints until OUT_DIR is written: OUT_DIR.partial, beside it."""
    return out.parent / f"{out.name}.partial"


def on_interrupt(args: argparse.Namespace) -> str:
    """The interrupt message's tail: where a learned method's fit resumes, or that nothing was written."""
    try:
        learned = CATALOG[method_name(args.method)].learned
    except GrowError:
        learned = False
    if not learned:
        return f"; nothing was written to {args.out}"
    from ..fit import latest_fit_checkpoint

    partial = partial_dir(Path(args.out))
    found = latest_fit_checkpoint(partial) if partial.is_dir() else None
    return resume_hint(partial, found[0] if found else None)


def check_options(args: argparse.Namespace) -> None:
    """Refuse, by the flag the user typed, every option the chosen method would ignore; then fill in the defaults."""
    method = CATALOG[args.method]
    given = {name: getattr(args, name) for name in (*FIXED_OPTIONS, *FIT_OPTIONS, *OPTION_NAMES)
             if getattr(args, name) is not None}
    method.check_options(given, FIT_OPTIONS if method.learned else FIXED_OPTIONS,
                         spell=lambda name: "--" + name.replace("_", "-"))
    if method.learned:
        if args.steps is None:
            args.steps = method.fit_steps
        if args.steps == 0:  # the operator's start: nothing to fit, so the fit's options would be ignored
            unused = [name for name in FIT_OPTIONS if name != "steps" and getattr(args, name) is not None]
            if unused:
                flags = ", ".join("--" + name.replace("_", "-") for name in unused)
                raise GrowError(f"{args.method} with 0 fit steps takes its start and fits nothing, so {flags} "
                                "would be ignored; pass --steps N to fit")
        if args.lr is None:
            args.lr = method.fit_lr
        for name, value in FIT_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        args.checkpoint_every = checkpoint_interval(args.checkpoint_every, args.steps)
        if args.steps < 0 or args.patience < 0 or not args.lr > 0:
            raise GrowError("--steps and --patience must not be negative and --lr must be positive")
        check_batch_size(args.batch_size)


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..api import grow
    from ..arch import adapter_for
    from ..resumable.atomic import remove
    from ..device import resolve_device
    from ..estimate import check_memory, fit_estimate, fixed_estimate
    from ..fit import FitWarning, latest_fit_checkpoint
    from ..io import load_config
    from ..ops import choose_width, get_method

    src, out = Path(args.src), Path(args.out)
    check_apart(src, out, "OUT_DIR")
    sizes = {key: getattr(args, flag) for flag, key in SIZE_FLAGS.items() if getattr(args, flag) is not None}
    if not sizes:
        raise GrowError("give at least one target size: --hidden, --layers, --heads, --kv-heads or --ffn")
    args.method = method_name(args.method)
    method = CATALOG[args.method]
    if method.learned:  # the fit checkpoints beside OUT_DIR and removes that folder at the end
        check_apart(src, partial_dir(out), "the fit's checkpoint folder")
    check_options(args)
    options = _options(args)
    partial = partial_dir(out)
    device = args.device if method.learned else "cpu"
    if not args.dry_run:
        # under torchrun / accelerate launch every process joins; a learned method's fit is split over them
        distributed.setup(resolve_device(device))
        if method.learned:
            distributed.check_batch(args.batch_size)
        if method.learned and partial.is_dir() and (out / "config.json").is_file() and not args.overwrite:
            raise GrowError(
                f"{out} holds a finished model and {partial} is left over from an interrupted clean-up of its fit; "
                f"delete {partial}, or pass --overwrite to grow again"
            )
        check_output_dir(out, args.overwrite)  # every process checks before rank 0 writes (barriers below)
    # Everything up to the estimate reads configs only: no weights are loaded or allocated yet.
    src_config = load_config(src)
    adapter = adapter_for(src_config)
    config = adapter.target_config(src_config, sizes, flags={key: f"--{flag.replace('_', '-')}" for flag, key in SIZE_FLAGS.items()})
    seq_len = default_seq_len(src_config, args.seq_len)
    if method.learned:
        est = fit_estimate(get_method(args.method), src_config, config, seed=args.seed, options=options,
                           batch_size=args.batch_size, seq_len=seq_len, steps=args.steps)
    else:
        est = fixed_estimate(src_config, config, seq_len)
        args.width = choose_width(method, adapter.dims(src_config), adapter.dims(config), family=adapter.family,
                                  rms_norm=adapter.rms_norm_eps(src_config) is not None, width=args.width)
    if args.dry_run:
        print(describe("source", src_config))
        print(describe("target", config))
        if not method.learned:
            print(f"{'width, depth operators':<24}{args.width}, {args.depth or method.depth}")
        print_estimate(est)
        return 0
    check_memory(est, device)
    model, tokenizer = load_model(src)
    main = distributed.is_main()
    if not method.learned:  # nothing to split: rank 0 grows and writes, the others wait for it
        def grow_fixed() -> None:
            grown = grow(model, config, args.method, seed=args.seed, width=args.width, depth=args.depth, **options)
            save_model(grown, out, src=src, tokenizer=tokenizer, overwrite=args.overwrite)
            print(describe("grown", grown.config))
            print(f"saved to {out} (grown on cpu; width operator {args.width}, depth operator {args.depth or method.depth})")

        distributed.barrier()
        distributed.on_main(grow_fixed)
        return 0
    data = task_data(args, model.config, tokenizer) if args.steps else None
    # grow() claims the checkpoint folder (lock, identity) and resumes from it
    fit_config = FitConfig(steps=args.steps, lr=args.lr, progress=sys.stderr.isatty(), device=device,
                           patience=args.patience)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # reported below as an error
        grown, result = grow(model, config, args.method, seed=args.seed, data=data, fit_config=fit_config,
                             return_fit=True, checkpoint_dir=partial, checkpoint_every=args.checkpoint_every, **options)
    if result.diverged_at is not None:
        if not main:
            return 1
        found = latest_fit_checkpoint(partial)
        kept = f"the last good checkpoint (after step {found[0]}) is kept in {partial}" if found else "no checkpoint was reached"
        raise GrowError(
            f"the fit's loss became non-finite at step {result.diverged_at} of {args.steps}; no model was "
            f"written and {kept}; try a lower --lr"
        )
    # the grown model keeps the tokenizer it was fit with (the source's, or the BPE trained on the data)
    distributed.on_main(save_model, grown, out, src=src, tokenizer=tokenizer or (data and data.tokenizer),
                        overwrite=args.overwrite)
    if not main:
        return 0
    remove(partial)  # renamed away first: a kill now leaves no half-deleted checkpoint folder
    print(describe("grown", grown.config))
    print(f"fit {len(result.losses)} steps: loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}" if result.losses
          else "fit 0 steps: the operator's start (--steps N fits it)")
    if result.held_out:
        held = dict(result.held_out)
        stop = f"; stopped early at step {result.stopped_at}" if result.stopped_at else ""
        print(f"held-out loss {held[0]:.4f} at the start, {held[result.best_step]:.4f} at step {result.best_step} "
              f"(the operator kept){stop}")
    print(f"saved to {out}" + (f" (fit on {resolved_device(device)})" if args.steps else ""))
    return 0
