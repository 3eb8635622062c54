"""``growkit grow``: read a save_pretrained folder, grow it, write the larger model."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..api import grow, resolve_target
from ..arch import adapter_for
from ..core.errors import GrowError
from ..ops import DEPTH_OPS, WIDTH_OPS, get_method
from .common import add_data_options, check_output_dir, count_parameters, describe, load_model, save_model, task_data

SIZE_FLAGS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "ffn": "intermediate_size",
}


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
            "  growkit grow small/ big/ --method mango --rank 1 --layers 8 --hidden 256 --data corpus.txt --steps 100\n"
            "  growkit grow small/ big/ --method ligo --layers 8 --dry-run"
        ),
    )
    p.add_argument("src", metavar="SRC_DIR", help="source model folder (save_pretrained, safetensors)")
    p.add_argument("out", metavar="OUT_DIR", help="where to write the grown model (must be absent or empty)")
    p.add_argument("--method", default="exact", help="growth method (see `growkit methods`; default: exact)")
    sizes = p.add_argument_group("target sizes (at least one)")
    sizes.add_argument("--hidden", type=int, help="hidden size")
    sizes.add_argument("--layers", type=int, help="number of layers")
    sizes.add_argument("--heads", type=int, help="attention heads (default: hidden / head_dim)")
    sizes.add_argument("--kv-heads", type=int, help="key/value heads for GQA (default: keep the group size)")
    sizes.add_argument("--ffn", type=int, help="FFN inner size (default: keep the FFN ratio)")
    fixed = p.add_argument_group("fixed methods")
    fixed.add_argument("--width", choices=list(WIDTH_OPS), help="override the method's width operator")
    fixed.add_argument("--depth", choices=list(DEPTH_OPS), help="override the method's depth operator")
    fixed.add_argument("--noise", type=float, help="symmetry-breaking noise, relative to each matrix's std")
    learned = p.add_argument_group("learned methods (ligo, mango)")
    learned.add_argument("--steps", type=int, default=100, help="fit steps (default: 100)")
    learned.add_argument("--rank", type=int, help="Mango tensor-ring rank (default: 1)")
    learned.add_argument("--init", help="start from this operator (e.g. stackbert, net2net, bert2bert)")
    add_data_options(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--dry-run", action="store_true", help="print sizes, parameter counts and FLOPs; write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict:
    names = ("noise", "rank", "init")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run(args: argparse.Namespace) -> int:
    sizes = {key: getattr(args, flag) for flag, key in SIZE_FLAGS.items() if getattr(args, flag) is not None}
    if not sizes:
        raise GrowError("give at least one target size: --hidden, --layers, --heads, --kv-heads or --ffn")
    method = get_method(args.method)
    out = Path(args.out)
    if not args.dry_run:
        check_output_dir(out, args.overwrite)
    model, tokenizer = load_model(Path(args.src))
    config = resolve_target(model, sizes)
    options = _options(args)
    adapter = adapter_for(model)
    if args.dry_run:
        print(describe("source", model.config))
        print(describe("target", config))
        if method.learned:
            operator = method.build(adapter.to_canonical(model), adapter.dims(config), seed=args.seed, **options)
            print(f"operator  {args.method}: {count_parameters(operator):,} parameters")
        return 0
    data = task_data(args, model.config, tokenizer) if method.learned else None
    extra = {"data": data, "steps": args.steps} if method.learned else {"width": args.width, "depth": args.depth}
    grown = grow(model, config, args.method, seed=args.seed, **extra, **options)
    save_model(grown, out, src=Path(args.src), tokenizer=tokenizer, overwrite=args.overwrite)
    print(describe("grown", grown.config))
    print(f"saved to {out}")
    return 0
