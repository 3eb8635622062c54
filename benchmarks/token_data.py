"""Tokens folders at scale: tokenize a generated ~1 GB corpus, then train on it and on a 10 MB one.

Reports, for ``growkit tokenize`` on the large corpus, its tokens/s and the peak
memory of its whole process tree (the sum of the processes' proportional set
sizes, sampled every 0.2 s, so shared pages count once), and for
``growkit train MODEL --data TOKENS_DIR --steps 20`` on the large and on the
10 MB corpus, each run's peak resident memory (the kernel's ``ru_maxrss``): the
two must be close, since batches are read from the memory maps. Last, the data
loader's share of a training step (the time of drawing a batch over the time of
the whole step, same batches, in this process).

The model is GPT-2, 4 layers x 128 hidden, a 4k BPE vocabulary, 128 positions;
training uses growkit train's defaults (batch 16 x 128). The corpus is Shakespeare's paragraphs in a seeded random order, written as
64 MB files. Everything lives under ``--work`` and the generated corpus and its
tokens are deleted at the end (``--keep`` keeps them).

    python benchmarks/token_data.py                    # 1 GB, --workers 2
    python benchmarks/token_data.py --gb 0.05 --workers 1   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from growkit.arch.tiny import tiny_model
from growkit.data import TokenCorpus, build_task_data, embedded_text, load_tokenizer, train_bpe
from growkit.io import load_pretrained, save_pretrained
from growkit.train import TrainConfig, make_optimizer

FILE_BYTES = 64 << 20
MB = 1 << 20


def write_corpus(folder: Path, total_bytes: int, seed: int) -> int:
    """Files of Shakespeare paragraphs in a seeded random order, ``total_bytes`` in all; returns the bytes written."""
    paragraphs = [p.strip() + "\n\n" for p in embedded_text().split("\n\n") if p.strip()]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, number = 0, 0
    while written < total_bytes:
        size = min(FILE_BYTES, total_bytes - written)
        parts, n = [], 0
        while n < size:
            p = rng.choice(paragraphs)
            parts.append(p)
            n += len(p.encode("utf-8"))
        data = "".join(parts).encode("utf-8")
        (folder / f"part-{number:04d}.txt").write_bytes(data)
        written += len(data)
        number += 1
    return written


def _tree_pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its wall time, its own ``ru_maxrss`` and the peak PSS of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak, done = psutil.Process(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _tree_pss(watched))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - start, "maxrss_mb": usage.ru_maxrss / 1024, "tree_pss_mb": peak[0] / MB,
            "output": output.strip().splitlines()[-2:]}


def loader_share(model_dir: Path, tokens: Path, steps: int, threads: int) -> dict:
    """Seconds per batch drawn from ``tokens`` and per whole training step (batch included), batch 16 x 128."""
    torch.set_num_threads(threads)
    model = load_pretrained(model_dir).train()
    data = build_task_data("gpt2", path=tokens, tokenizer=load_tokenizer(model_dir), seq_len=128, batch_size=16)
    optimizer = make_optimizer(model, TrainConfig())
    stream = data.train_batches(0)
    draw = step = 0.0
    for i in range(steps + 2):  # two warm-up steps are not counted
        t0 = time.perf_counter()
        batch = next(stream)
        t1 = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= 2:
            draw, step = draw + t1 - t0, step + t2 - t0
    return {"batch_ms": 1e3 * draw / steps, "step_ms": 1e3 * step / steps, "share": draw / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="size of the large corpus in GiB (default 1)")
    parser.add_argument("--small-mb", type=float, default=10.0, help="size of the small corpus in MiB (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="growkit tokenize --workers (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training runs (default 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/growkit-token-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora and tokens folders")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    growkit = [sys.executable, "-m", "growkit"]
    try:
        tokenizer = train_bpe(embedded_text(2_000_000), 4096)
        model = tiny_model("gpt2", vocab_size=4096, n_embd=128, n_layer=4, n_positions=128)
        save_pretrained(model, work / "model", tokenizer)
        results: dict = {"workers": args.workers, "threads": args.threads, "cpus": os.cpu_count()}
        for name, size in (("small", int(args.small_mb * MB)), ("large", int(args.gb * (1 << 30)))):
            corpus, tokens = work / f"corpus-{name}", work / f"tokens-{name}"
            written = write_corpus(corpus, size, seed=0)
            tok = run_measured([*growkit, "tokenize", str(corpus), "--tokenizer", str(work / "model"), "--out",
                                str(tokens), "--workers", str(args.workers), "--no-progress"], env)
            count = TokenCorpus(tokens).total
            train = run_measured([*growkit, "train", str(work / "model"), "--data", str(tokens), "--steps", "20",
                                  "--out", str(work / f"train-{name}"), "--no-progress"], env)
            results[name] = {"corpus_mb": written / MB, "tokens": count, "tokenize": tok,
                             "tokens_per_s": count / tok["seconds"], "train": train}
            shutil.rmtree(corpus)
            print(f"{name}: {written / MB:,.0f} MB -> {count:,} tokens; tokenize {tok['seconds']:.0f} s "
                  f"({count / tok['seconds']:,.0f} tokens/s), peak {tok['tree_pss_mb']:.0f} MB (tree PSS), "
                  f"{tok['maxrss_mb']:.0f} MB (main ru_maxrss); train 20 steps peak {train['maxrss_mb']:.0f} MB "
                  f"ru_maxrss, {train['tree_pss_mb']:.0f} MB PSS", flush=True)
        results["loader"] = loader_share(work / "model", work / "tokens-large", steps=20, threads=args.threads)
        small, large = results["small"]["train"], results["large"]["train"]
        print(f"train peak, large minus small corpus: {large['maxrss_mb'] - small['maxrss_mb']:+.0f} MB (ru_maxrss), "
              f"{large['tree_pss_mb'] - small['tree_pss_mb']:+.0f} MB (PSS)")
        loader = results["loader"]
        print(f"data loader: {loader['batch_ms']:.2f} ms per batch of 16 x 128 in a {loader['step_ms']:.0f} ms "
              f"training step ({100 * loader['share']:.2f}%)")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
