"""The re-warm: how far a converged small model's loss rises when it trains on at the grown targets' schedule.

Every grown target of ``growkit bench`` trains with the benchmark's schedule: a warm-up to the
peak lr, then decay. A function-preserving start sits at the small model's eval loss, which the
small model reached annealed, at the end of its own decay. This script trains the bench's own
small model on, with the schedule and data order its grown targets get, and prints its eval
loss every ``--every`` steps: how much of the loss the grown targets climb back in their first
steps (report.md's "Back at the small model's loss") is the re-warm itself rather than growth::

    python benchmarks/rewarm.py --bench runs/bench-gpt2-tiny-long --family gpt2 --preset tiny-long --seeds 0,1,2

``--bench`` is a finished benchmark folder (its tokenizer and cached small models are read);
``--lr`` overrides the preset's peak lr where the bench ran with ``--grown-lr``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from growkit.bench.presets import get_preset
from growkit.bench.runner import BenchSpec, load_data
from growkit.bench.variants import with_schedule
from growkit.io import load_pretrained
from growkit.train import evaluate, lr_factor, make_optimizer


def rewarm_curve(model: torch.nn.Module, data, cfg, steps: int, every: int) -> list[tuple[int, float]]:
    """(step, eval loss) at step 0 and every ``every`` steps of training ``model`` on under ``cfg``'s schedule."""
    device, factor = torch.device("cpu"), lr_factor(cfg)
    optimizer = make_optimizer(model, cfg)
    curve = [(0, evaluate(model, data.eval_batches, device))]
    model.train()
    for step, batch in zip(range(steps), data.train_batches(cfg.seed)):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * factor(step)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % every == 0:
            curve.append((step + 1, evaluate(model, data.eval_batches, device)))
            model.train()
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", required=True, help="a benchmark folder with its small models (source-*/)")
    parser.add_argument("--family", default="gpt2")
    parser.add_argument("--preset", default="tiny-long")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=300, help="steps to train on (default 300)")
    parser.add_argument("--every", type=int, default=25, help="eval every N steps (default 25)")
    parser.add_argument("--lr", type=float, default=None, help="peak lr (default: the preset's)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the bench's own default, so the losses match its runs
    preset, bench = get_preset(args.family, args.preset), Path(args.bench)
    data = load_data(BenchSpec(preset), bench)
    print(f"| seed | small model | highest (step) | at step {args.steps} |\n|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        folder = bench / f"source-{args.family}-{args.preset}-seed{seed}" / "train" / "final"
        cfg = with_schedule(preset.budget.config(seed, "cpu", False), preset.train_overrides(scratch=False))
        cfg = dataclasses.replace(cfg, lr=args.lr) if args.lr else cfg
        curve = rewarm_curve(load_pretrained(folder), data, cfg, args.steps, args.every)
        step, highest = max(curve, key=lambda point: point[1])
        print(f"| {seed} | {curve[0][1]:.3f} | {highest:.3f} ({step}) | {curve[-1][1]:.3f} |", flush=True)
        print("  " + " ".join(f"{s}:{loss:.3f}" for s, loss in curve), flush=True)


if __name__ == "__main__":
    main()
