"""``growkit train``: train a saved model on local data with growkit's training loop."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import GrowError
from ..data import build_task_data, load_tokenizer
from ..io import load_pretrained
from ..train import SCHEDULES, TrainConfig, train

HEADLESS = ("GPT2Model", "BertModel", "ViTModel", "LlamaModel")


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a saved model (e.g. a grown one) on local data",
        description=(
            "Train the model saved in MODEL_DIR (a save_pretrained folder with model.safetensors).\n"
            "Text models use the folder's tokenizer.json, or a byte-level BPE trained on the data.\n"
            "Without --data, text models train on the built-in corpus and ViT on the digits.\n"
            "OUT gets metrics.jsonl, checkpoint-<step> folders if asked, and the final model in OUT/final."
        ),
        epilog="example:\n  growkit train runs/grown --steps 200 --out runs/trained",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="folder written by save_pretrained")
    p.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    p.add_argument(
        "--data", help="a .txt/.md file or folder or a saved HF datasets folder (text models); "
        "'digits' or a class-per-folder image tree (ViT); default: the built-in corpus, or digits for ViT",
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"warmup steps (default {d.warmup})")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help=f"decay after warmup (default {d.schedule})")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help=f"final lr / peak lr (default {d.min_lr_ratio})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay})")
    p.add_argument("--clip", type=float, default=d.clip, help=f"gradient norm clip, 0 for none (default {d.clip})")
    p.add_argument("--batch-size", type=int, default=16, help="examples per step (default 16)")
    p.add_argument("--seq-len", type=int, help="tokens per example for text models (default 128, or the model's positions if fewer)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help=f"evaluate every k steps (default {d.eval_every})")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="checkpoint every N steps (default: only the final model)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"data order and dropout seed (default {d.seed})")
    p.add_argument("--device", choices=("cpu", "auto"), default=d.device, help="cpu, or auto to use a GPU when there is one (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GrowError(f"output folder {out} exists and is not empty; choose a new one")
    model = load_pretrained(args.model_dir)
    name = type(model).__name__
    if name in HEADLESS:
        raise GrowError(f"{args.model_dir} holds a {name}, which has no head and so no training loss; save the model with its head")
    family = model.config.model_type
    tokenizer = None
    if family != "vit" and (args.model_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(args.model_dir)
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 128)
    data = build_task_data(
        family, path=None if args.data in (None, "digits") else args.data, tokenizer=tokenizer,
        config=model.config, seq_len=args.seq_len or min(128, positions), batch_size=args.batch_size,
    )
    cfg = TrainConfig(
        steps=args.steps, lr=args.lr, warmup=args.warmup, schedule=args.schedule, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
        progress=False if args.no_progress else None,
    )
    result = train(model, data, cfg, out)
    if result.diverged_at is not None:
        raise GrowError(f"the loss became non-finite at step {result.diverged_at}; try a lower --lr (metrics in {out})")
    print(
        f"trained {name} for {cfg.steps} steps: eval loss {result.eval_loss:.4f}, "
        f"{result.flops:.3g} FLOPs, {result.seconds:.1f} s; model saved to {result.final_dir}"
    )
    return 0
