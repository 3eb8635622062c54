"""One prepared GPU check: the CUDA tests, a 1-process FSDP run, training MFU, Mango's fit step at real
sizes and the ``small`` savings preset, in one go that fits a short GPU lease.

A GPU is lent to this project rarely and briefly, so everything that needs one runs here, each part
inside its own share of a time budget, printing each figure as it comes and rewriting one JSON file
after every part (a part that fails is recorded and the next one still runs):

1. ``cuda_tests``: ``tests/test_cuda.py`` (device selection, bf16 autocast, fp32 operators under
   autocast, a fit and a short ``growkit train --device cuda``).
2. ``fsdp``: ``growkit train`` under ``accelerate launch`` with ``docs/fsdp_config.yaml`` adapted to
   one process on one GPU.
3. ``throughput``: training tokens/s and MFU (bf16 autocast, against the GPU's dense bf16 peak and a
   bf16 matmul measured in the same run) for the ``small`` preset's target (12L/512) and a GPT-2
   124M-shaped model, eager and with ``torch.compile``.
4. ``mango``: one Mango fit step (operator forward and backward plus the target's forward, backward
   and the operator's AdamW step) at GPT-2 small -> medium, ranks 1, 2 and 4, against a plain
   training step of the target on the same batch.
5. ``savings``: ``growkit bench --preset small`` with scratch, bert2bert, LiGO and Mango; the budget
   is cut to what the time left allows, and the output says so.

    bash benchmarks/gpu_check.sh                      # on a GPU: about 9 minutes on one H100
    bash benchmarks/gpu_check.sh --dry                # anywhere: tiny sizes, a few steps, CPU (CI runs this)
    bash benchmarks/gpu_check.sh --sections cuda_tests,savings --steps 2400 --jobs 5 \
        --methods scratch,net2net,bert2bert,ligo,mango     # the savings preset at a budget chosen by hand
    python benchmarks/gpu_check.py --sections throughput,mango --budget 300
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("cuda_tests", "fsdp", "throughput", "mango", "savings")
#: each section's share of the budget (what a section leaves unused passes to the next)
SHARE = {"cuda_tests": 0.10, "fsdp": 0.07, "throughput": 0.33, "mango": 0.18, "savings": 0.32}
#: dense bf16 peak TFLOP/s (no sparsity) by a substring of the device name, most specific first
PEAK_BF16 = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
             ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0))


class Check:
    """The running record: sections' figures, printed as they come and saved after each section."""

    def __init__(self, out: Path, budget: float, dry: bool):
        self.out, self.budget, self.dry = out, budget, dry
        self.methods = "scratch,bert2bert,ligo,mango"  #: the savings section's methods (--methods)
        self.jobs = 1  #: the savings section's worker processes, all on the one GPU (--jobs)
        self.seeds = 1  #: the savings section's seeds (--seeds)
        self.steps: int | None = None  #: the savings section's target steps (--steps), else fitted to the time left
        self.start = time.perf_counter()
        self.data: dict = {"dry": dry, "budget_s": budget, "sections": {}}
        self.path = out / "gpu_check.json"
        self.peak: float | None = None  #: --peak-tflops, else looked up by the device's name
        self.target_step_s: float | None = None  #: the small target's eager step, measured by ``throughput``
        self.section_start = self.start

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def say(self, line: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {line}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")

    def run(self, name: str, fn: Callable[["Check", float], dict], deadline: float) -> None:
        self.say(f"== {name} (about {max(deadline, 0):.0f} s)")
        began = self.section_start = time.perf_counter()
        try:
            record = {"status": "ok", **fn(self, deadline)}
        except Skip as why:
            record = {"status": "skipped", "why": str(why)}
        except Exception as err:  # one part's failure must not cost the rest of the lease
            record = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                      "trace": traceback.format_exc()[-4000:]}
        record["seconds"] = round(time.perf_counter() - began, 1)
        self.data["sections"][name] = record
        self.say(f"== {name}: {record['status']} in {record['seconds']} s"
                 + (f" ({record.get('why') or record.get('error')})" if record["status"] != "ok" else ""))
        self.save()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Skip(Exception):
    """A section that cannot run here (e.g. FSDP without a GPU)."""


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step: Callable[[], object], warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the ``warmup`` steps, seconds per step of the ``steps`` timed after them), device synced."""
    begin = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - begin
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return warm, (time.perf_counter() - begin) / steps


def env_python() -> dict:
    """The environment for a child process that must import this checkout's growkit."""
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}


def run_child(check: Check, argv: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run ``argv`` with this checkout on the path; its output goes to ``log`` and its tail is printed."""
    check.say("$ " + " ".join(argv))
    with log.open("w") as f:
        proc = subprocess.run(argv, cwd=ROOT, env=env_python(), stdout=f, stderr=subprocess.STDOUT,
                              timeout=max(timeout, 10))
    tail = log.read_text()[-1500:].strip().splitlines()[-8:]
    for line in tail:
        check.say("  | " + line)
    return proc


# --- 1. tests -----------------------------------------------------------------------------------------------
def cuda_tests(check: Check, deadline: float) -> dict:
    proc = run_child(check, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                     max(deadline, 150), check.out / "cuda_tests.log")
    summary = (check.out / "cuda_tests.log").read_text().strip().splitlines()[-1]
    if proc.returncode not in (0,):
        raise RuntimeError(f"pytest exit {proc.returncode}: {summary}")
    return {"summary": summary, "gpu": torch.cuda.is_available()}


# --- 2. FSDP --------------------------------------------------------------------------------------------------
def fsdp_config_one_gpu(path: Path) -> Path:
    """``docs/fsdp_config.yaml`` with one process on one GPU."""
    import yaml

    config = yaml.safe_load((ROOT / "docs" / "fsdp_config.yaml").read_text())
    config.update(num_processes=1, gpu_ids="0")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fsdp(check: Check, deadline: float) -> dict:
    from growkit.arch.tiny import tiny_model

    config = fsdp_config_one_gpu(check.out / "fsdp_1gpu.yaml")
    if not torch.cuda.is_available():
        raise Skip(f"FSDP needs a GPU (the one-GPU config {config.name} was written and parses)")
    model_dir, run_dir = check.out / "fsdp_model", check.out / "fsdp_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    tiny_model("gpt2", n_embd=128, n_layer=4, n_head=4, n_positions=128, vocab_size=512).save_pretrained(model_dir)
    proc = run_child(check, [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                             "-m", "growkit", "train", str(model_dir), "--device", "cuda", "--checkpoint-every", "0",
                             "--steps", "40", "--batch-size", "16", "--seq-len", "64", "--eval-every", "20",
                             "--no-progress", "--out", str(run_dir)], max(deadline, 120), check.out / "fsdp.log")
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch exit {proc.returncode} (see fsdp.log)")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    if not (run_dir / "final" / "model.safetensors").is_file():
        raise RuntimeError("the FSDP run wrote no final model")
    return {"eval_loss_first": evals[0], "eval_loss_last": evals[-1], "loss_fell": evals[-1] < evals[0]}


# --- 3. throughput and MFU -----------------------------------------------------------------------------------
def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def matmul_tflops(dev: torch.device, dry: bool) -> float:
    """A plain square matmul's TFLOP/s in the training dtype (bf16 on CUDA, fp32 on the CPU): the same run's reference."""
    n, dtype = (1024, torch.float32) if dry or dev.type == "cpu" else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    reps, begin = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - begin) / 1e12


def step_rate(config, batch: int, seq: int, compiled: bool, warmup: int, steps: int) -> dict:
    """Tokens/s of forward + backward + AdamW under the training loop's precision policy, random tokens."""
    from transformers import AutoModelForCausalLM

    from growkit.device import autocast_context, use_attention
    from growkit.flops import train_flops_per_token

    dev = device()
    torch.manual_seed(0)
    with dev:
        model = AutoModelForCausalLM.from_config(config)
    use_attention(model, dev)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    forward = torch.compile(model) if compiled else model
    ids = torch.randint(config.vocab_size, (batch, seq), device=dev)

    def step() -> None:
        with autocast_context(dev):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm, seconds = time_steps(step, warmup, steps)
    tokens = batch * seq / seconds
    return {"tokens_per_s": round(tokens), "step_ms": round(seconds * 1e3, 2), "warmup_s": round(warm, 1),
            "tflops": tokens * train_flops_per_token(config, seq) / 1e12,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}


def gpt2_config(dry: bool):
    """GPT-2 small's shape (124M), or a tiny GPT-2 in dry mode."""
    from transformers import GPT2Config

    if dry:
        return GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def throughput_models(dry: bool) -> dict:
    """name -> (config, batch, seq): the ``small`` preset's target and a GPT-2 124M shape (tiny in dry mode)."""
    from growkit.bench import get_preset

    preset = get_preset("gpt2", "smoke" if dry else "small")
    target = preset.target_config(preset.source_config())
    gpt2 = gpt2_config(dry)
    return {f"small target {preset.target}": (target, preset.batch_size, preset.seq_len),
            "gpt2-124M shape" if not dry else "gpt2 (dry)": (gpt2, 4 if dry else 16, 32 if dry else 1024)}


def throughput(check: Check, deadline: float) -> dict:
    dev = device()
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    peak = check.peak or (peak_tflops(name) if dev.type == "cuda" else None)
    reference = matmul_tflops(dev, check.dry)
    check.say(f"{name}: plain {'bf16' if dev.type == 'cuda' else 'fp32'} matmul {reference:.3g} TFLOP/s; "
              f"dense bf16 peak {peak or 'unknown'} TFLOP/s")
    ends = time.perf_counter() + deadline
    rows = {}
    modes = (False,) if check.dry else (False, True)  # compiling on a CPU costs about a minute: not in dry mode
    for label, (config, batch, seq) in throughput_models(check.dry).items():
        for compiled in modes:
            key = f"{label}, {'compiled' if compiled else 'eager'}"
            if compiled and ends - time.perf_counter() < 60:
                rows[key] = {"skipped": "not enough time left to compile"}
                continue
            row = step_rate(config, batch, seq, compiled, warmup=2 if check.dry else 5, steps=3 if check.dry else 20)
            row["mfu_vs_peak"] = float(f"{row['tflops'] / peak:.4g}") if peak else None
            row["mfu_vs_matmul"] = float(f"{row['tflops'] / reference:.4g}")
            row["tflops"] = float(f"{row['tflops']:.4g}")
            row.update(batch=batch, seq=seq)
            rows[key] = row
            check.say(f"{key}: {row['tokens_per_s']:,} tokens/s, {row['step_ms']} ms/step, {row['tflops']:.3g} TFLOP/s, "
                      f"MFU {row['mfu_vs_peak'] if peak else '-'} of peak, {row['mfu_vs_matmul']} of the matmul "
                      f"(warm-up {row['warmup_s']} s)")
    return {"device_name": name, "peak_bf16_tflops": peak, "matmul_tflops": float(f"{reference:.4g}"), "models": rows}


# --- 4. Mango fit step at real sizes ---------------------------------------------------------------------------
def mango(check: Check, deadline: float) -> dict:
    from transformers import GPT2LMHeadModel

    from growkit.arch import adapter_for
    from growkit.device import autocast_context, use_attention
    from growkit.fit import target_loss
    from growkit.ops import get_method

    dev, dry = device(), check.dry
    small = gpt2_config(dry)
    torch.manual_seed(0)
    source_model = GPT2LMHeadModel(small)
    adapter = adapter_for(source_model)
    target = adapter.target_config(small, {"hidden_size": 128 if dry else 1024, "num_hidden_layers": 4 if dry else 24})
    dims, source = adapter.dims(target), adapter.to_canonical(source_model)
    with dev:
        template = GPT2LMHeadModel(target)
    use_attention(template, dev)
    template.train()
    batch_size, seq = (2, 32) if dry else (8, 512)
    ids = torch.randint(small.vocab_size, (batch_size, seq), device=dev)
    batch = {"input_ids": ids, "labels": ids}
    warmup, steps = (1, 2) if dry else (2, 5)

    optimizer = torch.optim.AdamW(template.parameters(), lr=1e-4, fused=dev.type == "cuda")

    def plain_step() -> float:
        with autocast_context(dev):
            loss = template(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    plain = time_steps(plain_step, warmup, steps)[1]
    del optimizer
    check.say(f"GPT-2 {small.n_layer}L/{small.n_embd} -> {target.n_layer}L/{target.n_embd}, batch {batch_size} x {seq}: "
              f"plain training step {plain * 1e3:.1f} ms")
    rows = {}
    for rank in (1, 2, 4):
        if time.perf_counter() - check.section_start > deadline * 0.8 and rows:
            rows[f"rank {rank}"] = {"skipped": "out of this section's time"}
            continue
        began = time.perf_counter()
        # a one-term start (stackbert), so rank 1 runs too: the step's cost depends on the rank, not the start
        operator = get_method("mango").build(source, dims, rank=rank, init="stackbert", seed=0).to(dev)
        params = [p for p in operator.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def fit_step() -> float:
            loss = target_loss(operator, template, adapter, batch, dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return loss.item()

        seconds = time_steps(fit_step, 1, steps)[1]
        row = {"fit_step_ms": round(seconds * 1e3, 1), "ratio_to_plain": round(seconds / plain, 2),
               "operator_params": sum(p.numel() for p in params), "build_and_warmup_s": round(time.perf_counter() - began - steps * seconds, 1)}
        if dev.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        rows[f"rank {rank}"] = row
        check.say(f"mango rank {rank}: fit step {row['fit_step_ms']} ms = {row['ratio_to_plain']}x the plain step"
                  + (f", peak {row['peak_gib']} GiB" if "peak_gib" in row else ""))
        del operator, opt, params
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"source": f"{small.n_layer}L/{small.n_embd}", "target": f"{target.n_layer}L/{target.n_embd}",
            "batch": [batch_size, seq], "plain_step_ms": round(plain * 1e3, 1), "ranks": rows}


# --- 5. the small savings preset ---------------------------------------------------------------------------------
def savings(check: Check, deadline: float) -> dict:
    from growkit.bench import get_preset

    dry = check.dry
    preset = get_preset("gpt2", "smoke" if dry else "small")
    argv = [sys.executable, "-m", "growkit", "bench", "--family", "gpt2", "--preset", preset.name, "--methods",
            check.methods, "--seeds", str(check.seeds), "--jobs", str(check.jobs), "--out", str(check.out / "savings")]
    steps, source_steps = preset.budget.steps, preset.source_budget.steps
    if dry:  # the smoke preset, shorter still: this only proves the pipeline
        steps, source_steps = 8, 8
        argv += ["--steps", "8", "--source-steps", "8", "--fit-steps", "2"]
    elif check.steps:  # a budget chosen by hand: the source keeps the preset's share of it
        steps, source_steps = check.steps, max(round(check.steps * source_steps / steps), 1)
        argv += ["--steps", str(steps), "--source-steps", str(source_steps)]
    else:
        # A preset longer than the time left (e.g. with --data and a larger budget) does not fit a short lease: scale both budgets
        # by the time left, from the target's measured step time (the throughput section's eager figure).
        step_s = (check.target_step_s or 0.03) * 1.5  # the loop's clipping, scheduler, logging and evaluation
        fixed = 2 * preset.fit_steps * 3 * step_s + 60  # two fits (a fit step costs ~3 plain steps), start-up, data
        per_target_step = step_s * (4 + 0.6 * source_steps / steps)  # 4 targets; the source's steps are cheaper
        affordable = max((0.85 * deadline - fixed) / per_target_step, 200)
        if affordable < steps:
            scale = affordable / steps
            steps, source_steps = int(steps * scale), max(int(source_steps * scale), 200)
            argv += ["--steps", str(steps), "--source-steps", str(source_steps)]
    reduced = (steps, source_steps) != (preset.budget.steps, preset.source_budget.steps) and not dry
    check.say(f"budget: source {source_steps} steps, targets {steps} steps"
              + (f" (REDUCED from {preset.source_budget.steps}/{preset.budget.steps} to fit the lease)" if reduced else ""))
    proc = run_child(check, argv, deadline, check.out / "savings.log")
    if proc.returncode != 0:
        raise RuntimeError(f"growkit bench exit {proc.returncode} (see savings.log)")
    results = json.loads((check.out / "savings" / "results.json").read_text())
    return {"preset": preset.name, "reduced_budget": reduced, "target_steps": steps, "source_steps": source_steps,
            "scratch_converged": results.get("scratch_converged"),
            "scratch_last_fifth_improvement": results.get("scratch_last_fifth_improvement"),
            "methods": results.get("methods")}


def export(check: Check, folder: Path) -> None:
    """Copy the few files worth keeping (the JSON, the logs, the bench report and plots) flat into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [check.path, check.out / "savings" / "report.md", check.out / "savings" / "loss_vs_flops.png",
              check.out / "savings" / "loss_vs_seconds.png", check.out / "savings" / "savings_curve.png",
              check.out / "savings.log", check.out / "fsdp.log",
              check.out / "cuda_tests.log"]
    for path in wanted:
        if path.is_file():
            shutil.copy2(path, folder / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="tiny sizes and a few steps, on whatever device is here")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="work folder (default runs/gpu_check)")
    parser.add_argument("--export", type=Path, help="also copy the JSON, logs, report and plots into this folder")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (default 540; dry mode 900, a ceiling for slow machines)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--methods", default="scratch,bert2bert,ligo,mango", help="the savings section's methods")
    parser.add_argument("--jobs", type=int, default=1,
                        help="the savings section's worker processes, sharing the GPU (a small target leaves it idle)")
    parser.add_argument("--seeds", type=int, default=1, help="the savings section's seeds (default 1)")
    parser.add_argument("--steps", type=int, help="the savings section's target steps (the source keeps the preset's "
                                                   "share); default: as many as the time left allows with --jobs 1")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if its name is not in the table")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.budget or (900.0 if args.dry else 540.0), args.dry)
    check.peak = args.peak_tflops
    check.methods, check.jobs, check.seeds, check.steps = args.methods, args.jobs, args.seeds, args.steps
    dev = device()
    check.data["device"] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "type": dev.type,
        "name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if dev.type == "cuda" else None,
        "bf16": torch.cuda.is_bf16_supported() if dev.type == "cuda" else None,
    }
    check.say(f"gpu_check{' (dry)' if args.dry else ''} on {check.data['device']['name']}, torch {torch.__version__}, "
              f"budget {check.budget:.0f} s")
    parts = {"cuda_tests": cuda_tests, "fsdp": fsdp, "throughput": throughput, "mango": mango, "savings": savings}
    for i, name in enumerate(chosen):
        share = SHARE[name] / sum(SHARE[s] for s in chosen[i:])
        check.run(name, parts[name], check.left() * share)
        if name == "throughput" and check.data["sections"][name]["status"] == "ok":
            eager = next((r for k, r in check.data["sections"][name]["models"].items() if "small" in k and "eager" in k), None)
            check.target_step_s = eager["step_ms"] / 1e3 if eager else None
    if args.export:
        export(check, args.export)
    failed = [n for n, r in check.data["sections"].items() if r["status"] == "failed"]
    check.say(f"done in {time.perf_counter() - check.start:.0f} s; {check.path}"
              + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
