"""``growkit train``: train a saved model on local data with growkit's training loop."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.catalog import PRECISIONS, REPORTERS
from ..core.errors import GrowError
from ..settings import SCHEDULES, TrainConfig
from .common import (
    add_checkpoint_option,
    add_device_option,
    check_apart,
    check_batch_size,
    checkpoint_interval,
    default_seq_len,
    describe,
    print_estimate,
    resolved_device,
    resume_hint,
)

def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a saved model (e.g. a grown one) on local data",
        description=(
            "Train the model saved in MODEL_DIR (a save_pretrained folder with model.safetensors).\n"
            "Text models use the folder's tokenizer.json, or a byte-level BPE trained on the data.\n"
            "Without --data, text models train on the built-in corpus and ViT on the digits.\n"
            "OUT gets run.json, metrics.jsonl, checkpoint-<step> folders (the newest --keep-checkpoints; each a\n"
            "model plus its training_state.safetensors) and the final model in OUT/final (only what save_pretrained\n"
            "and the tokenizer write). Rerunning the same command after a kill resumes from the newest\n"
            "checkpoint and ends with the same weights and metrics as an uninterrupted run. A finished run with\n"
            "--schedule constant is extended by rerunning it with a larger --steps."
        ),
        epilog=(
            "examples:\n"
            "  growkit train runs/grown --steps 200 --out runs/trained\n"
            "  growkit train runs/grown --steps 2000 --checkpoint-every 100 --out runs/long   # rerun it to resume\n"
            "  growkit train runs/grown --steps 200 --batch-size 32 --out runs/x --dry-run\n"
            "  growkit train runs/grown --steps 500 --grad-accum 4 --threads 2 --report-to tensorboard --out runs/y\n"
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
    p.add_argument("--decay-fraction", type=float, default=d.decay_fraction,
                   help="the decay reaches its floor at this share of --steps, then the lr holds (default "
                   f"{d.decay_fraction:g}: at the last step; a grown model may anneal sooner)")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help=f"final lr / peak lr (default {d.min_lr_ratio})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay})")
    p.add_argument("--clip", type=float, default=d.clip, help=f"gradient norm clip, 0 for none (default {d.clip})")
    p.add_argument("--batch-size", type=int, default=16,
                   help="examples per forward, over all processes of a multi-process launch (default 16)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, metavar="N",
                   help="accumulate the gradients of N batches per optimiser step: the global batch is N x --batch-size "
                   f"and each step counts N batches' FLOPs (default {d.grad_accum})")
    p.add_argument("--seq-len", type=int, help="tokens per example for text models (default 128, or the model's positions if fewer)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help=f"evaluate every k steps (default {d.eval_every})")
    add_checkpoint_option(p, "run (OUT/checkpoint-<step>)")
    p.add_argument("--keep-checkpoints", type=int, default=1, metavar="K",
                   help="keep the newest K checkpoints (default 1; 0 keeps all)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"data order and dropout seed (default {d.seed})")
    add_device_option(p, "training")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="auto (default): fp32 on the CPU, bf16 autocast on a GPU that has it; fp32; bf16 (CUDA only: "
                   "bf16 matmuls are about 100x slower than fp32 on CPUs)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster on a busy machine)")
    p.add_argument("--report-to", choices=REPORTERS,
                   help="also log the metrics through Accelerate's tracker (tensorboard: OUT/tensorboard; needs the "
                   "tensorboard package); OUT/metrics.jsonl is always written")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="print the parameters, a peak memory estimate and the FLOPs; load no weights, write nothing")
    p.set_defaults(func=run, on_interrupt=on_interrupt)


def on_interrupt(args: argparse.Namespace) -> str:
    """The interrupt message's tail: the step a rerun of the same command resumes from."""
    from ..train import latest_checkpoint

    found = latest_checkpoint(args.out) if args.out.is_dir() else None
    return resume_hint(found[1] if found else args.out, found[0] if found else None)


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..arch import IMAGE, adapter_for
    from ..data import build_task_data, load_tokenizer
    from ..device import resolve_device
    from ..estimate import check_memory, train_estimate
    from ..io import load_config, load_pretrained, model_class
    from ..train import check_out_dir, latest_checkpoint, train

    out = args.out
    check_apart(args.model_dir, out, "--out")
    if args.threads is not None:
        if args.threads < 1:
            raise GrowError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    device = args.device or "auto"
    cfg = TrainConfig(
        steps=args.steps, lr=args.lr, warmup=args.warmup, schedule=args.schedule, min_lr_ratio=args.min_lr_ratio,
        decay_fraction=args.decay_fraction, weight_decay=args.weight_decay, clip=args.clip, eval_every=args.eval_every,
        checkpoint_every=checkpoint_interval(args.checkpoint_every, args.steps), keep_checkpoints=args.keep_checkpoints,
        seed=args.seed, device=device, precision=args.precision, grad_accum=args.grad_accum,
        progress=False if args.no_progress else None, report_to=(args.report_to,) if args.report_to else (),
    )
    cfg.check()
    if not args.dry_run:
        distributed.setup(resolve_device(device))  # under torchrun / accelerate launch: join the group
        distributed.check_batch(args.batch_size)
        check_out_dir(out, cfg, resume=True)  # refused before the model is loaded; train() claims the folder
    config = load_config(args.model_dir)
    adapter = adapter_for(config)
    name = model_class(config).__name__
    if model_class(config) is adapter.base_class:
        raise GrowError(f"{args.model_dir} holds a {name}, which has no head and so no training loss; save the model with its head")
    check_batch_size(args.batch_size)
    seq_len = default_seq_len(config, args.seq_len)
    est = train_estimate(config, args.batch_size, seq_len, cfg.steps)
    est.tokens_per_step *= cfg.grad_accum  # a step runs grad_accum batches; the memory is one batch's
    if args.dry_run:
        print(describe("model", config))
        print_estimate(est)
        return 0
    check_memory(est, device)
    model = load_pretrained(args.model_dir)
    tokenizer = None
    if adapter.objective != IMAGE and (args.model_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(args.model_dir)
    data = build_task_data(
        adapter.family, path=None if args.data in (None, "digits") else args.data, tokenizer=tokenizer,
        config=model.config, seq_len=seq_len, batch_size=args.batch_size,
    )
    result = train(model, data, cfg, out, resume=True)  # claims OUT (identity, lock) and resumes or extends it
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
        f"trained {name} for {cfg.steps} steps of {args.batch_size * cfg.grad_accum} examples on "
        f"{resolved_device(device)}: eval loss {result.eval_loss:.4f}, {result.flops:.3g} FLOPs, "
        f"{result.seconds:.1f} s; model saved to {result.final_dir}"
    )
    return 0
