"""``growkit inspect``: what a saved model is, how big, and what a training token costs."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="print a saved model's family, sizes, parameters and training FLOPs per token",
        description="Read DIR/config.json (no weights are loaded) and print the family, class, sizes, "
        "parameter count and the analytic training FLOPs per token (forward + backward).",
        epilog="example:\n  growkit inspect runs/grown",
    )
    p.add_argument("dir", metavar="DIR", help="a save_pretrained folder")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for the attention term (default: 128)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..arch import adapter_for
    from ..estimate import parameter_count
    from ..flops import train_flops_per_token
    from ..io import load_config

    config = load_config(Path(args.dir))
    d = adapter_for(config).dims(config)
    rows = [
        ("family", config.model_type),
        ("class", (getattr(config, "architectures", None) or ["?"])[0]),
        ("layers", d.layers),
        ("hidden", d.hidden),
        ("ffn", d.ffn),
        ("heads", f"{d.heads} (kv {d.kv_heads}, head_dim {d.head_dim})"),
        ("tied embeddings", bool(getattr(config, "tie_word_embeddings", False))),
        ("parameters", f"{parameter_count(config):,}"),
        (f"train FLOPs/token (seq {args.seq_len})", f"{train_flops_per_token(config, args.seq_len):,.0f}"),
    ]
    for key, value in rows:
        print(f"{key:<28} {value}")
    return 0
