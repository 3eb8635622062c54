"""growkit's training loop vs a bare PyTorch loop: tokens/s on the same model, batches and optimiser.

The bare loop does only the work every training step needs (forward, backward,
clipping, AdamW, the lr schedule, one loss ``.item()``); growkit's loop adds
Accelerate, FLOP and token accounting, metrics records and the progress bar.
Runs alternate (bare, growkit, bare, ...) in short rounds so that load from
other processes hits both alike, and the ratio is the median of the rounds'
paired ratios. Two clocks are reported: wall time (what a user sees) and this
process's CPU time (less disturbed when other processes share the cores).
growkit's figures time the whole ``train()`` call, so they include its setup
and one eval batch.

    python benchmarks/loop_overhead.py            # GPT-2 4 layers x 128, 4k vocab, batch 16 x 128
    python benchmarks/loop_overhead.py --steps 10 --rounds 2 --threads 1
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from growkit.data import build_task_data, embedded_text
from growkit.flops import batch_tokens
from growkit.train import TrainConfig, lr_factor, make_optimizer, train


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bare_loop(model: torch.nn.Module, batches: list[dict], cfg: TrainConfig) -> None:
    """The plain loop over ``batches``."""
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    model.train()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = GPT2Config(
        n_layer=args.layers, n_embd=args.hidden, n_head=max(1, args.hidden // 32), vocab_size=args.vocab,
        n_positions=args.seq_len, bos_token_id=0, eos_token_id=0,
    )
    data = build_task_data("gpt2", text=embedded_text(1_500_000), config=config, vocab_size=args.vocab,
                           seq_len=args.seq_len, batch_size=args.batch_size, eval_batches=1)
    cfg = TrainConfig(steps=args.steps, eval_every=0, progress=False)
    batches = list(itertools.islice(data.train_batches(cfg.seed), args.steps))  # what train() will see
    tokens = batch_tokens(config, batches[0]) * args.steps
    torch.manual_seed(0)
    init = GPT2LMHeadModel(config)
    bare_loop(copy.deepcopy(init), batches[:3], cfg)  # warm the allocator and kernels once

    bare, loop = [], []
    for _ in range(args.rounds):
        bare.append(timed(lambda: bare_loop(copy.deepcopy(init), batches, cfg)))
        loop.append(timed(lambda: train(copy.deepcopy(init), data, cfg)))

    def rate(runs: list[tuple[float, float]], clock: int) -> float:
        return tokens / statistics.median(run[clock] for run in runs)

    def ratio(clock: int) -> float:
        return statistics.median(b[clock] / g[clock] for b, g in zip(bare, loop))

    print(f"GPT-2 {args.layers}L x {args.hidden}, vocab {args.vocab}, batch {args.batch_size} x {args.seq_len}, "
          f"{args.rounds} alternating rounds of {args.steps} steps, {torch.get_num_threads()} thread(s)")
    print(f"{'median tokens/s':24}{'wall':>10}{'CPU time':>10}")
    for name, runs in (("bare PyTorch loop", bare), ("growkit train()", loop)):
        print(f"{name:24}{rate(runs, 0):10.0f}{rate(runs, 1):10.0f}")
    print(f"{'ratio growkit / bare':24}{ratio(0):10.1%}{ratio(1):10.1%}   (median of the paired rounds)")

if __name__ == "__main__":
    main()
