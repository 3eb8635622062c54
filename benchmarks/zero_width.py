"""Does a zero-extended start train? Exact growth by tiling and by zero-extension, side by side.

Zero-extension (:mod:`growkit.ops.zero_width`) starts the new residual dimensions,
heads and FFN units at zero output. This checks, on one pretrained tiny Llama
(RMSNorm, SwiGLU, GQA 4/2 heads of 16, tied embeddings, 2 layers x 64, FFN 176),
that such a start keeps the source's held-out loss, that its loss falls, and
that the new parts leave zero: for each grown model it reports the share of the
squared weight norm held by the new entries of the residual writers (token
embedding columns, ``o`` and ``mlp_out`` columns) and by the new heads' and FFN
units' output rows, before and after training, beside the share those entries
have of the matrix (what a dense weight would give).

Entries (every target has 4 layers; new layers are identity layers):

- ``tile x2``: exact tiling to 128 wide, 8/4 heads, FFN 352 (the integer-factor exact);
- ``zero x2``: zero-extension to the same target;
- ``zero x1.5``: zero-extension to 96 wide, 6/3 heads, FFN 264 (what tiling refuses);
- ``... copy``: zero-extension whose new inputs copy old units instead of random draws;
- ``scratch x1.5``: a fresh random target of the x1.5 size, the reference.

All targets train with the same settings, data order and held-out batches::

    nohup python benchmarks/zero_width.py --out runs/zero-width > zero-width.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

import growkit
from growkit.arch import adapter_for
from growkit.io import load_pretrained
from growkit.ops.depth import DEPTH_OPERATORS
from growkit.ops.zero_width import zero_extend
from growkit.train import TrainConfig, evaluate, train

from deep_source import config, parse_and_load  # the same corpus, tokenizer and Llama config (head_dim 16, tied)

SOURCE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=176)
X2 = dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=8, num_key_value_heads=4, intermediate_size=352)
X15 = dict(num_hidden_layers=4, hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=264)
ENTRIES = ("tile x2", "zero x2", "zero x2 copy", "zero x1.5", "zero x1.5 copy", "scratch x1.5")
CPU = torch.device("cpu")


def source_model(out: Path, data, steps: int) -> LlamaForCausalLM:
    """The pretrained source, trained once and kept in ``out/source``."""
    folder = out / "source"
    if not (folder / "final" / "config.json").is_file():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config(data, SOURCE))
        train(model, data, TrainConfig(steps=steps, lr=3e-3, warmup=40, eval_every=0, seed=10_000), folder)
    return load_pretrained(folder / "final")


def grown(entry: str, source: LlamaForCausalLM, data, seed: int) -> LlamaForCausalLM:
    sizes = X2 if "x2" in entry else X15
    if entry.startswith("scratch"):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config(data, sizes))
    if not entry.endswith("copy"):
        return growkit.grow(source, sizes, method="exact", width=entry.split()[0], seed=seed)
    adapter = adapter_for(source)
    target = adapter.target_config(source.config, sizes)
    dims = adapter.dims(target)
    canon = zero_extend(adapter.to_canonical(source), dims, new_weights="copy", seed=seed)
    return adapter.from_canonical(DEPTH_OPERATORS["identity"](canon, dims.layers), target, type(source))


def new_shares(model: LlamaForCausalLM) -> dict[str, float]:
    """Share of the squared norm in the entries that start at zero, and the share of entries they are."""
    canon = adapter_for(model).to_canonical(model)
    d, f, q = SOURCE["hidden_size"], SOURCE["intermediate_size"], SOURCE["num_attention_heads"] * 16
    group_src = SOURCE["num_attention_heads"] // SOURCE["num_key_value_heads"]
    dims = canon.dims
    group = dims.heads // dims.kv_heads
    old_heads = [h for h in range(dims.heads) if h // group < SOURCE["num_key_value_heads"] and h % group < group_src]
    new_q = torch.ones(dims.heads * 16, dtype=torch.bool)
    for h in old_heads:
        new_q[h * 16:(h + 1) * 16] = False
    parts = {
        "writer columns": [(canon.tensors[n], (..., slice(d, None))) for n in ("tok_emb", "layer.o", "layer.mlp_out")],
        "new unit rows": [(canon.tensors["layer.o"], (slice(None), new_q)),
                          (canon.tensors["layer.mlp_out"], (slice(None), slice(f, None)))],
    }
    shares = {}
    for part, pieces in parts.items():
        new = sum(float(t[index].double().pow(2).sum()) for t, index in pieces)
        total = sum(float(t.double().pow(2).sum()) for t, _ in pieces)
        count = sum(t[index].numel() for t, index in pieces)
        shares[part] = new / total
        shares[part + " (entries)"] = count / sum(t.numel() for t, _ in pieces)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/zero-width", help="cache folder (tokenizer, source) and results.json")
    parser.add_argument("--entries", default=",".join(ENTRIES), help="comma-separated entries")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=300, help="training steps of every target")
    args, out, data = parse_and_load(parser)
    source = source_model(out, data, args.pretrain_steps)
    base = evaluate(source, data.eval_batches, CPU)
    print(f"source 2L/64 held-out loss {base:.4f} after {args.pretrain_steps} steps")
    cfg = TrainConfig(steps=args.steps, lr=2e-3, warmup=20, eval_every=max(1, args.steps // 6), seed=args.seed)
    rows = []
    print("| entry | start | evals (step: loss) | end | new writer columns: share (entries) | "
          "new unit rows: share (entries) | s |\n|---|---|---|---|---|---|---|")
    for entry in args.entries.split(","):
        model = grown(entry, source, data, args.seed)
        before = new_shares(model) if entry.startswith("zero") else {}
        begin = time.perf_counter()
        result = train(model.train(), data, cfg)
        seconds = time.perf_counter() - begin
        after = new_shares(model) if entry.startswith("zero") else {}
        evals = [(r["step"], r["eval_loss"]) for r in result.history if "eval_loss" in r]
        rows.append({"entry": entry, "evals": evals, "before": before, "after": after, "seconds": seconds})

        def share(part: str) -> str:
            if not after:
                return "—"
            return f"{before[part]:.3f} -> {after[part]:.3f} ({after[part + ' (entries)']:.3f})"

        mid = ", ".join(f"{s}: {l:.3f}" for s, l in evals[1:-1])
        print(f"| {entry} | {evals[0][1]:.4f} | {mid} | {evals[-1][1]:.4f} | {share('writer columns')} | "
              f"{share('new unit rows')} | {seconds:.0f} |", flush=True)
    (out / f"results-seed{args.seed}.json").write_text(json.dumps({"source": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
