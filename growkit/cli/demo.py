"""``growkit demo``: the main job on the embedded default, with no downloads and no arguments."""
from __future__ import annotations

import argparse

import torch

from ..api import grow
from ..arch.tiny import tiny_model
from ..ops import METHODS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="grow a small built-in GPT-2 with every fixed method and show how well each preserves it",
        description="Grow a built-in 2-layer GPT-2 to twice its width and depth with every fixed method, "
        "and print how far each grown model's logits are from the source's.",
        epilog="example:\n  growkit demo --seed 1",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = tiny_model("gpt2", seed=args.seed).eval()
    ids = torch.randint(0, source.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        ref = source(ids).logits
    target = {"hidden_size": 2 * source.config.n_embd, "num_hidden_layers": 2 * source.config.n_layer}
    print(f"source: gpt2 {source.config.n_layer}L/{source.config.n_embd}  ->  target: {target}")
    print(f"{'method':<12} {'max |logit diff|':>17}")
    for name, method in METHODS.items():
        if method.learned:
            continue
        with torch.no_grad():
            diff = (grow(source, target, method=name, seed=args.seed)(ids).logits - ref).abs().max().item()
        print(f"{name:<12} {diff:>17.2e}")
    return 0
