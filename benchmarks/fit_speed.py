"""One LiGO fit step vs one plain training step of the same target model, on the same batch.

A fit step materialises the target's weights from the operator, runs the target
through ``functional_call``, backpropagates into the operator and takes an AdamW
step on the operator's parameters (``growkit.fit.fit``, NaN guard included). The
plain step is forward + backward + AdamW on the target model's own parameters.
Rounds alternate (plain, fit, plain, ...) so load from other processes hits both
alike; the median of the per-step times is reported. Target: ratio <= 1.5x.

    python benchmarks/fit_speed.py                 # GPT-2 4L/128 -> 8L/256, vocab 8192, batch 8 x 128
    python benchmarks/fit_speed.py --rounds 3 --steps 3 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from growkit.arch import adapter_for
from growkit.fit import FitConfig, fit
from growkit.ops import get_method


def plain_steps(model: torch.nn.Module, batch: dict, steps: int) -> float:
    """Seconds per forward + backward + AdamW step on ``model``'s own weights."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    return (time.perf_counter() - start) / steps


def fit_steps(source, dims, template, adapter, batch: dict, steps: int, init: str) -> float:
    """Seconds per LiGO fit step (operator built outside the clock)."""
    operator = get_method("ligo").build(source, dims, init=init)
    result = fit(operator, template, adapter, [batch], FitConfig(steps=steps, progress=False))
    return result.seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, nargs=2, default=(4, 8), metavar=("SRC", "TGT"))
    parser.add_argument("--hidden", type=int, nargs=2, default=(128, 256), metavar=("SRC", "TGT"))
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--init", default="stackbert_noisy", help="LiGO start (default: stackbert_noisy)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = GPT2Config(
        n_layer=args.layers[0], n_embd=args.hidden[0], n_head=args.hidden[0] // 32, vocab_size=args.vocab,
        n_positions=args.seq_len, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    small = GPT2LMHeadModel(config).eval()
    adapter = adapter_for(small)
    target = adapter.target_config(config, {"hidden_size": args.hidden[1], "num_hidden_layers": args.layers[1]})
    source, dims = adapter.to_canonical(small), adapter.dims(target)
    template = adapter.from_canonical(get_method("ligo").build(source, dims).materialize(), target, GPT2LMHeadModel)
    ids = torch.randint(args.vocab, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}

    plain_steps(GPT2LMHeadModel(target), batch, 2)  # warm the allocator and kernels once
    fit_steps(source, dims, template, adapter, batch, 2, args.init)
    plain, ligo = [], []
    for _ in range(args.rounds):
        plain.append(plain_steps(GPT2LMHeadModel(target), batch, args.steps))
        ligo.append(fit_steps(source, dims, template, adapter, batch, args.steps, args.init))

    p, f = statistics.median(plain), statistics.median(ligo)
    print(
        f"GPT-2 {args.layers[0]}L/{args.hidden[0]} -> {args.layers[1]}L/{args.hidden[1]}, vocab {args.vocab}, "
        f"batch {args.batch_size} x {args.seq_len}, {args.steps} steps x {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads, LiGO init {args.init}"
    )
    print(f"plain training step  {p * 1e3:8.1f} ms   (rounds: {', '.join(f'{x * 1e3:.1f}' for x in plain)})")
    print(f"LiGO fit step        {f * 1e3:8.1f} ms   (rounds: {', '.join(f'{x * 1e3:.1f}' for x in ligo)})")
    print(f"ratio fit / plain    {f / p:8.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
