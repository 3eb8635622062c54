"""Deep-source test bed: how much of a pretrained deep Llama each growth start keeps.

A real 30-layer Llama grown by a non-integer factor lost most of what it knew under
layers stacked on top and borrowed units (design.md, "What growth looks like on a
real checkpoint"). This bed reproduces that situation at CPU scale:

- source: Llama (RMSNorm, SwiGLU, RoPE, GQA 6/2 heads of 16, tied embeddings),
  8 layers x 96, FFN 288, pretrained on the embedded corpus (BPE 2048, seq 64,
  batch 16) until its held-out loss is flat, then cached in ``OUT/source``;
- target: 10 layers x 144, 9/3 heads, FFN 432 (width x1.5 in every axis, +2 layers).

For every entry it prints the held-out loss of the grown model before any training
(the start) and, for learned methods, after ``--fit-steps`` fit steps, each beside
the source's own held-out loss; a method fits as ``grow`` fits it unless ``--fit-steps``
or ``--fit-lr`` says otherwise. Entries use the bench's variant syntax
(``mango+init=stackbert``, ``ligo+fit_steps=50``; the fit keeps its default held-out check,
which keeps the best operator, the start included); fixed methods also take
``+depth=...`` / ``+width=...`` to move the new layers (stack: on top, interpolate:
repeated in place, identity: inserted as identity layers)::

    nohup python benchmarks/deep_source.py --out runs/deep-source > deep.log 2>&1 &
    python benchmarks/deep_source.py --out runs/deep-source --methods net2net,mango --fit-steps 20
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from growkit.arch import adapter_for
from growkit.bench.variants import parse_variant
from growkit.data.batches import build_task_data
from growkit.data.corpus import embedded_text
from growkit.data.tokenizer import load_tokenizer, train_bpe
from growkit.fit import FitConfig, fit
from growkit.io import load_pretrained
from growkit.ops import get_method, grow_fixed
from growkit.train import TrainConfig, evaluate, train

SOURCE = dict(num_hidden_layers=8, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, intermediate_size=288)
TARGET = dict(num_hidden_layers=10, hidden_size=144, num_attention_heads=9, num_key_value_heads=3, intermediate_size=432)
SEQ_LEN, BATCH, VOCAB = 64, 16, 2048
PRETRAIN = TrainConfig(steps=3000, lr=3e-3, warmup=100, eval_every=250, seed=10_000)
METHODS = (
    "stackbert,interpolate,net2net,bert2bert,bert2bert+depth=identity,"
    "mango,mango+init=stackbert,mango+init=interpolate,mango+init=net2net+split=even,mango+init=bert2bert,"
    "ligo,ligo+init=net2net"
)


def load_data(out: Path):
    """The embedded corpus as Llama batches; the tokenizer is trained once and kept in ``out/tokenizer``."""
    text = embedded_text()
    folder = out / "tokenizer"
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").is_file() else train_bpe(text, VOCAB)
    tokenizer.save_pretrained(str(folder))
    return build_task_data("llama", text=text, tokenizer=tokenizer, seq_len=SEQ_LEN, batch_size=BATCH,
                           eval_batches=8, eval_fraction=0.1, seed=0)


def config(data, sizes: dict) -> LlamaConfig:
    return LlamaConfig(**sizes, head_dim=16, vocab_size=len(data.tokenizer), max_position_embeddings=SEQ_LEN,
                       tie_word_embeddings=True, attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0)


def source_model(out: Path, data, steps: int) -> tuple[LlamaForCausalLM, dict]:
    """The pretrained source (trained now, or loaded from ``out/source``) and its pretraining record."""
    folder = out / "source"
    record_file = folder / "source.json"
    if not record_file.is_file():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config(data, SOURCE))
        cfg = TrainConfig(**{**PRETRAIN.__dict__, "steps": steps})
        result = train(model, data, cfg, folder / "train")
        evals = [(r["step"], r["eval_loss"]) for r in result.history if "eval_loss" in r]
        record = {"steps": steps, "eval_loss": result.eval_loss, "seconds": result.seconds, "evals": evals}
        record_file.write_text(json.dumps(record, indent=1))
    return load_pretrained(folder / "train" / "final"), json.loads(record_file.read_text())


def grow_entry(entry: str, source, target_config, data, fit_steps: int | None, fit_lr: float | None,
               seed: int) -> dict:
    """Held-out loss of ``entry``'s start and, for a learned method, after its fit."""
    variant = parse_variant(entry)
    adapter = adapter_for(source)
    canon, tgt = adapter.to_canonical(source), adapter.dims(target_config)
    method = get_method(variant.method)
    options = dict(variant.options)
    row = {"method": entry}
    if not method.learned:
        width, depth = options.pop("width", method.width), options.pop("depth", method.depth)
        grown = adapter.from_canonical(grow_fixed(canon, tgt, width, depth, seed=seed, **options), target_config,
                                       type(source))
        row["start"] = evaluate(grown, data.eval_batches, torch.device("cpu"))
        return row
    operator = method.build(canon, tgt, seed=seed, **options)
    template = adapter.from_canonical(operator.materialize(), target_config, type(source))
    row["start"] = evaluate(template, data.eval_batches, torch.device("cpu"))
    steps = variant.fit.get("fit_steps", method.fit_steps if fit_steps is None else fit_steps)
    if not steps:  # the method's default takes its start: what grow returns is the start above
        return row
    lr = variant.fit.get("fit_lr", method.fit_lr if fit_lr is None else fit_lr)
    begin = time.perf_counter()
    result = fit(operator, template, adapter, data, FitConfig(steps=steps, lr=lr, progress=False), seed=seed)
    grown = adapter.from_canonical(operator.materialize(), target_config, type(source))
    row.update(fit=evaluate(grown, data.eval_batches, torch.device("cpu")), fit_steps=len(result.losses),
               fit_s=time.perf_counter() - begin, first_fit_loss=result.losses[0], last_fit_loss=result.losses[-1],
               held_out=result.held_out, best_step=result.best_step)
    return row


def parse_and_load(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path, object]:
    """Add ``--seed`` and ``--threads``, parse, set the threads, create ``--out`` and load the data there."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return args, out, load_data(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/deep-source", help="cache folder (tokenizer, source; each run writes rows-seed<k>.json)")
    parser.add_argument("--methods", default=METHODS, help="comma-separated methods or variants")
    parser.add_argument("--pretrain-steps", type=int, default=PRETRAIN.steps)
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="fit steps of learned methods (default: each method's own, as grow runs it: ligo 100, "
                             "mango 0, its start)")
    parser.add_argument("--fit-lr", type=float, default=None, help="the fit's lr (default: each method's own)")
    args, out, data = parse_and_load(parser)
    source, record = source_model(out, data, args.pretrain_steps)
    base = evaluate(source, data.eval_batches, torch.device("cpu"))
    evals = record["evals"]
    print(f"source 8L/96 held-out loss {base:.4f} after {record['steps']} steps; "
          f"last evals: {', '.join(f'{s}: {l:.4f}' for s, l in evals[-4:])}")
    target_config = config(data, TARGET)
    rows = []
    print(f"| entry | start | start - source | after fit | fit - source | fit s |\n|---|---|---|---|---|---|")
    for entry in args.methods.split(","):
        row = grow_entry(entry, source, target_config, data, args.fit_steps, args.fit_lr, args.seed)
        row["source"] = base
        rows.append(row)
        kept = f", kept step {row['best_step']}" if row.get("best_step") is not None else ""
        fitted = (f"{row['fit']:.4f} ({row['fit_steps']} steps{kept}) | {row['fit'] - base:+.4f} | {row['fit_s']:.0f}"
                  if "fit" in row else "— | — | —")
        print(f"| {entry} | {row['start']:.4f} | {row['start'] - base:+.4f} | {fitted} |", flush=True)
    (out / f"rows-seed{args.seed}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
