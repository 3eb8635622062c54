"""``growkit train``: train a saved model on local data with growkit's training loop."""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import asdict
from pathlib import Path

from .. import distributed
from ..checkpoint import check_same_run, digest_model_folder, read_run, run_lock, write_run
from ..core.errors import GrowError
from ..data import build_task_data, load_tokenizer
from ..device import DEVICES, resolve_device
from ..estimate import check_memory, train_estimate
from ..io import load_config, load_pretrained, model_class
from ..train import SCHEDULES, TrainConfig, latest_checkpoint, train
from .common import add_checkpoint_option, check_batch_size, data_digest, default_seq_len, describe, print_estimate

#: default checkpoint interval of ``growkit train``
CHECKPOINT_EVERY = 50

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
            "OUT gets run.json, metrics.jsonl, checkpoint-<step> folders (the newest --keep-checkpoints) and\n"
            "the final model in OUT/final. Rerunning the same command after a kill resumes from the newest\n"
            "checkpoint and ends with the same weights and metrics as an uninterrupted run."
        ),
        epilog=(
            "examples:\n"
            "  growkit train runs/grown --steps 200 --out runs/trained\n"
            "  growkit train runs/grown --steps 2000 --checkpoint-every 100 --out runs/long   # rerun it to resume\n"
            "  growkit train runs/grown --steps 200 --batch-size 32 --out runs/x --dry-run\n"
            "  torchrun --nproc_per_node 2 -m growkit train runs/grown --steps 200 --out runs/ddp   # 2 processes\n"
            "  accelerate launch --num_processes 2 -m growkit train runs/grown --device cuda --out runs/gpu"
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="folder written by save_pretrained")
    p.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    p.add_argument(
        "--data", help="a .txt/.md file or folder, a saved HF datasets folder, or a tokens folder from "
        "`growkit tokenize`, streamed from disk (text models); "
        "'digits' or a class-per-folder image tree (ViT); default: the built-in corpus, or digits for ViT",
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"warmup steps (default {d.warmup})")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help=f"decay after warmup (default {d.schedule})")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help=f"final lr / peak lr (default {d.min_lr_ratio})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay})")
    p.add_argument("--clip", type=float, default=d.clip, help=f"gradient norm clip, 0 for none (default {d.clip})")
    p.add_argument("--batch-size", type=int, default=16,
                   help="examples per step, over all processes of a multi-process launch (default 16)")
    p.add_argument("--seq-len", type=int, help="tokens per example for text models (default 128, or the model's positions if fewer)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help=f"evaluate every k steps (default {d.eval_every})")
    add_checkpoint_option(p, CHECKPOINT_EVERY, "run (OUT/checkpoint-<step>)")
    p.add_argument("--keep-checkpoints", type=int, default=1, metavar="K",
                   help="keep the newest K checkpoints (default 1; 0 keeps all)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"data order and dropout seed (default {d.seed})")
    p.add_argument("--device", choices=DEVICES, default=d.device,
                   help="cpu (fp32); cuda (bf16 autocast, SDPA attention); auto: cuda when there is a GPU (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the parameters, a peak memory estimate and the FLOPs; load no weights, write nothing")
    p.set_defaults(func=run)


def _check_out(out: Path) -> None:
    """Refuse an output folder that holds anything but an unfinished run (which is resumed)."""
    if out.exists() and not out.is_dir():
        raise GrowError(f"output folder {out} exists and is not a folder; choose a new one")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if read_run(out) is None:
        raise GrowError(f"output folder {out} exists and is not empty; choose a new one")
    if (out / "final").exists():
        raise GrowError(f"output folder {out} exists and is not empty: it holds a finished run; choose a new one")


def run(args: argparse.Namespace) -> int:
    out = args.out
    if not args.dry_run:
        distributed.setup(resolve_device(args.device))  # under torchrun / accelerate launch: join the group
        distributed.check_batch(args.batch_size)
        _check_out(out)  # every process checks before rank 0 writes anything (the barrier below)
    config = load_config(args.model_dir)
    name = model_class(config).__name__
    if name in HEADLESS:
        raise GrowError(f"{args.model_dir} holds a {name}, which has no head and so no training loss; save the model with its head")
    check_batch_size(args.batch_size)
    seq_len = default_seq_len(config, args.seq_len)
    cfg = TrainConfig(
        steps=args.steps, lr=args.lr, warmup=args.warmup, schedule=args.schedule, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
        device=args.device, progress=False if args.no_progress else None,
    )
    cfg.check()
    est = train_estimate(config, args.batch_size, seq_len, cfg.steps)
    if args.dry_run:
        print(describe("model", config))
        print_estimate(est)
        return 0
    check_memory(est, cfg.device)
    model = load_pretrained(args.model_dir)
    family = model.config.model_type
    tokenizer = None
    if family != "vit" and (args.model_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(args.model_dir)
    data = build_task_data(
        family, path=None if args.data in (None, "digits") else args.data, tokenizer=tokenizer,
        config=model.config, seq_len=seq_len, batch_size=args.batch_size,
    )
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                if k not in ("checkpoint_every", "keep_checkpoints", "progress")}
    run_id = {"command": "train", "model": digest_model_folder(args.model_dir), "data": data_digest(data), "settings": settings}
    distributed.check_same(run_id, "the model, data or settings")
    distributed.barrier()
    with contextlib.ExitStack() as stack:

        def claim() -> None:  # rank 0 only: the run folder, its identity and its lock
            if out.is_dir() and any(out.iterdir()):
                check_same_run(out, run_id, "training run")
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run_lock(out))
            write_run(out, run_id)
            found = latest_checkpoint(out)
            if found:
                print(f"resuming from step {found[0]} ({found[1]})", file=sys.stderr)

        distributed.on_main(claim)
        result = train(model, data, cfg, out, resume=True)
    if not distributed.is_main():  # rank 0 reports (and the launcher sees its exit code)
        return 0 if result.diverged_at is None else 1
    if result.diverged_at is not None:
        found = latest_checkpoint(out)
        kept = f"the last good checkpoint (after step {found[0]}) is kept in {found[1]}" if found else "no checkpoint was reached"
        raise GrowError(
            f"the loss became non-finite at step {result.diverged_at} of {cfg.steps}; no final model was written and {kept}; "
            f"try a lower --lr (metrics in {out / 'metrics.jsonl'})"
        )
    print(
        f"trained {name} for {cfg.steps} steps: eval loss {result.eval_loss:.4f}, "
        f"{result.flops:.3g} FLOPs, {result.seconds:.1f} s; model saved to {result.final_dir}"
    )
    return 0
