"""The training loop: AdamW, warmup then decay, clipping, periodic eval, JSONL metrics, checkpoints.

One loop, readable top to bottom (nanoGPT's shape). Hugging Face Accelerate puts
the model, optimiser and scheduler on the device. Every run of a comparison goes
through this same loop, so their curves differ only by the initial weights:
the data order comes from ``TaskData.train_batches(seed)`` and the evaluation
set is fixed. The loop syncs with the device once per logged step (the loss),
and the clock it reports counts training only, not evaluation or checkpoints.

Under a multi-process launch (``torchrun``/``accelerate launch``) Accelerate wraps
the model in DDP (or FSDP, with an FSDP config), every process trains on its
block of each global batch with its loss weighted by its share of the batch's
items, so the update is the single-process one (see :mod:`growkit.distributed`);
losses are reduced over the processes and only rank 0 writes. On CUDA the forward
runs under bf16 autocast (Accelerate's mixed precision) with SDPA attention; on
the CPU everything stays fp32 (see :mod:`growkit.device`).
"""
from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from . import distributed
from .checkpoint import all_finite, atomic_write_text, digest_tensors, numbered, prune, rng_state, set_rng_state
from .core.errors import GrowError
from .data import TaskData, TokenTaskData
from .device import DEVICES, precision, resolve_device, use_attention
from .flops import batch_tokens, flops_per_batch
from .io import STATE_FILE, load_pretrained, load_training_state, save_pretrained

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    """Optimiser, schedule and bookkeeping of one run; the defaults suit the small models growkit trains on CPU."""

    steps: int = 200  #: optimiser steps
    lr: float = 1e-3  #: peak learning rate (small models tolerate a high one)
    warmup: int = 20  #: steps of linear warmup from lr/warmup to lr
    schedule: str = "cosine"  #: decay after warmup: cosine, linear or constant
    min_lr_ratio: float = 0.1  #: the decay ends at lr * min_lr_ratio
    weight_decay: float = 0.1  #: AdamW decay, on matrices only (not biases, norms)
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0  #: max gradient norm; 0 turns clipping off
    eval_every: int = 50  #: held-out eval every k steps, plus at step 0 and at the end; 0: only at the end
    log_every: int = 1  #: a metrics record (mean train loss since the last one) every k steps
    checkpoint_every: int = 0  #: a checkpoint every N steps (0: none); out_dir always gets the final model
    keep_checkpoints: int = 0  #: keep only the newest K checkpoints (0: keep all)
    seed: int = 0  #: seeds the data order and dropout
    device: str = "cpu"  #: "cpu", "cuda", or "auto" (a GPU when there is one); CUDA trains in bf16 autocast
    progress: bool | None = None  #: tqdm bar; None: only when stderr is a terminal

    def check(self) -> None:
        if self.steps < 1:
            raise GrowError(f"steps must be at least 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise GrowError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise GrowError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        resolve_device(self.device)  # "cuda" without a GPU is refused here, before any work
        for name in ("warmup", "eval_every", "checkpoint_every", "keep_checkpoints", "clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise GrowError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.lr <= 0 or self.log_every < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise GrowError("lr must be positive, log_every at least 1 and min_lr_ratio within [0, 1]")


@dataclass
class TrainResult:
    """Per-record ``history`` (also in ``metrics.jsonl``), the final eval loss and the run's totals."""

    history: list[dict] = field(default_factory=list)
    eval_loss: float = math.nan
    flops: float = 0.0
    seconds: float = 0.0
    final_dir: Path | None = None
    diverged_at: int | None = None


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """The multiplier of ``cfg.lr`` at each step: linear warmup, then the chosen decay to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return factor


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW decaying matrices (weights, embeddings) but not vectors (biases, norm scales).

    The fused kernel is several times faster than the per-tensor loop on CPU too.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def evaluate(model: torch.nn.Module, batches: list[dict], device: torch.device, causal: bool | None = None) -> float:
    """Mean loss over the fixed eval batches, in eval mode (no dropout).

    Under several processes each one evaluates its block of every batch and the
    weighted losses are summed over the processes, which gives the single-process
    value (``causal`` says how to count a batch's loss items; read from the
    model's config when None). Every process runs the same forwards (a process
    whose block of a short batch is empty runs one row with weight 0), which
    FSDP needs.
    """
    model.eval()
    with torch.no_grad():
        if distributed.world_size() == 1:
            losses = [model(**{k: v.to(device) for k, v in b.items()}).loss for b in batches]
            model.train()
            return torch.stack(losses).mean().item()
        if causal is None:
            causal = distributed.is_causal(_config(model).model_type)
        parts = []
        for b in batches:
            part, weight, items = distributed.shard(b, causal)
            if distributed.batch_rows(part) == 0:
                part, weight, items = {k: v[:1] for k, v in b.items()}, 0.0, 0
            out = model(**{k: v.to(device) for k, v in part.items()})
            parts.append(distributed.weighted_loss(out, weight, items).detach().float())
        total = distributed.all_reduce_sum(torch.stack(parts))
    model.train()
    return total.mean().item()


def _config(model: torch.nn.Module):
    """The HF config of ``model``, through a DDP/FSDP wrapper."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config


def _prepare_out(out_dir: Path | None, resume: bool) -> Path | None:
    if out_dir is None:
        if resume:
            raise GrowError("resume=True needs the out_dir that holds the run's checkpoints")
        return None
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GrowError(f"output folder {out_dir} exists and is not a folder; choose a new one")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not resume:
            raise GrowError(f"output folder {out_dir} exists and is not empty; choose a new one")
        if (out_dir / "final").exists():
            raise GrowError(f"output folder {out_dir} exists and is not empty: it holds a finished run; choose a new one")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


#: settings that may change between a run and its resumption (they do not change the result)
_RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoints", "progress")


def _comparable(cfg: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k not in _RESUMABLE_CHANGES}


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a kill is dropped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                records.append(rec)
    return records


def latest_checkpoint(out_dir: Path) -> tuple[int, Path] | None:
    """The newest complete ``checkpoint-<step>`` in ``out_dir`` (written atomically, so present means whole)."""
    found = [(step, path) for step, path in numbered(out_dir, "checkpoint-") if (path / STATE_FILE).is_file()]
    return found[-1] if found else None


def _restore(model: torch.nn.Module, folder: Path) -> None:
    """Copy a checkpoint's weights into ``model``'s own tensors (their storage, and so the kernels, stay the same)."""
    saved = load_pretrained(folder)
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
    if missing or unexpected:
        raise GrowError(f"the checkpoint {folder} does not fit the model: {sorted(missing + unexpected)[:5]}")


def train(
    model: PreTrainedModel,
    data: TaskData | TokenTaskData,
    cfg: TrainConfig,
    out_dir: Path | None = None,
    *,
    flops_offset: float = 0.0,
    seconds_offset: float = 0.0,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` in place on ``data`` for ``cfg.steps`` steps.

    Records hold ``step``, ``loss`` (mean since the previous record), ``lr``,
    ``flops`` and ``seconds`` (cumulative, starting at the offsets, so a grown
    run can start after its operator's fit) and ``tokens_per_s``; evaluated
    steps add ``eval_loss`` (step 0 has only that). With ``out_dir`` (new or
    empty) records go to ``metrics.jsonl``, checkpoints to ``checkpoint-<step>``
    and the final model to ``final``. A non-finite loss (or non-finite weights
    at a checkpoint) stops the run early (``diverged_at``), without saving a
    final model; the checkpoints written before stay.

    With ``resume=True`` ``out_dir`` may hold an unfinished run of the same
    settings: training continues from its newest checkpoint (weights,
    optimiser, scheduler, RNG states, data position and counters), and the
    result equals an uninterrupted run's bit for bit on the same machine.
    Without a checkpoint the run starts over.
    """
    cfg.check()
    device = resolve_device(cfg.device)
    distributed.setup(device)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    if world > 1:
        distributed.check_batch(data.batch_size)
    out_dir = distributed.on_main(_prepare_out, out_dir, resume)  # rank 0 creates it; its refusal stops every rank
    torch.manual_seed(cfg.seed + rank)  # dropout: one stream per process (the data order is the global one)
    done, state = 0, None
    found = latest_checkpoint(out_dir) if resume else None
    if found is not None:
        done, folder = found
        state = load_training_state(folder)
        if _comparable(state.get("config", {})) != _comparable(asdict(cfg)):
            raise GrowError(f"{folder} was written with other training settings; rerun the same command, or start in a new folder")
        _restore(model, folder)
    use_attention(model, device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision(device).mixed_precision)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and out_dir and cfg.checkpoint_every:
        raise GrowError("resumable checkpoints are not supported under FSDP (the optimiser state is sharded); "
                        "pass --checkpoint-every 0: the final model is still written, gathered on rank 0")
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    # world > 1: DDP (or FSDP, which shards the weights here) around the model; parameters start as rank 0's.
    # The scheduler is not prepared: Accelerate's would step it once per process, but a step here is one global batch.
    model, optimizer = accelerator.prepare(model, optimizer)
    config, device = accelerator.unwrap_model(model).config, accelerator.device
    causal = distributed.is_causal(config.model_type)
    result = TrainResult(flops=flops_offset, seconds=seconds_offset)
    if resume:
        # Keep the records up to the checkpoint; later ones (and a line cut by a kill) are redone.
        def trim() -> list[dict]:
            kept = [r for r in read_metrics(out_dir / "metrics.jsonl") if r["step"] <= done] if state else []
            atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
            return kept

        kept = distributed.on_main(trim)
        result.history = kept
        result.eval_loss = next((r["eval_loss"] for r in reversed(kept) if "eval_loss" in r), math.nan)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.flops, result.seconds = state["flops"], state["seconds"]

    def record(rec: dict) -> None:
        result.history.append(rec)
        if out_dir and main:  # appended as it comes, so a killed run keeps its curve
            with (out_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")

    def checkpoint(folder: Path, step: int) -> None:
        rngs = distributed.gather_objects(rng_state())  # every process's dropout stream, for an exact resume
        weights = accelerator.get_state_dict(model) if fsdp else None  # FSDP: gathered from the shards (collective)
        if main:
            state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": rngs[0], "flops": result.flops, "seconds": result.seconds, "config": asdict(cfg)}
            if world > 1:
                state["rng_ranks"] = rngs
            if fsdp:  # the optimiser state is sharded: the final model is written without a resumable state
                state = None
            save_pretrained(accelerator.unwrap_model(model), folder, data.tokenizer, overwrite=True, state=state,
                            state_dict=weights)
        distributed.barrier()  # a checkpoint on disk is one every process has passed

    if cfg.eval_every and state is None:
        record({"step": 0, "eval_loss": evaluate(model, data.eval_batches, device, causal),
                "flops": result.flops, "seconds": result.seconds})
    model.train()
    if state is not None:
        saved = state.get("rng_ranks") or [state["rng"]]
        set_rng_state(saved[rank] if rank < len(saved) else saved[0])
    stream = data.train_batches(cfg.seed, start=done)
    first = next(stream)  # every train batch has this shape, so one count serves all steps
    # counted for the global batch: the FLOPs and tokens of all processes together
    step_flops, step_tokens = flops_per_batch(config, first), batch_tokens(config, first)
    if world > 1:
        distributed.check_same(digest_tensors(first), "the first training batch")
    stream = itertools.chain([first], stream)
    bar = tqdm(total=cfg.steps, initial=done, desc="train",
               disable=not main or not (sys.stderr.isatty() if cfg.progress is None else cfg.progress))
    loss_sum, count, tokens = torch.zeros((), device=device), 0, 0
    start = time.perf_counter()
    for step in range(done + 1, cfg.steps + 1):
        if world == 1:
            batch = {k: v.to(device) for k, v in next(stream).items()}
            loss = model(**batch).loss
            accelerator.backward(loss)
        else:  # this process's block; DDP averages the gradients, so world * weight makes them sum to the global one
            part, weight, items = distributed.shard(next(stream), causal)
            loss = distributed.weighted_loss(model(**{k: v.to(device) for k, v in part.items()}), weight, items)
            accelerator.backward(loss * world)
        if cfg.clip:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        count += 1
        tokens += step_tokens
        result.flops += step_flops
        bar.update()
        last = step == cfg.steps
        evaluating = last or (cfg.eval_every and step % cfg.eval_every == 0)
        saving = bool(out_dir) and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last
        if step % cfg.log_every and not evaluating and not saving:  # a checkpoint closes a record
            continue
        distributed.all_reduce_sum(loss_sum)  # several processes: their weighted losses sum to the global mean
        mean_loss = (loss_sum / count).item()  # the one device sync
        elapsed = time.perf_counter() - start
        result.seconds += elapsed
        rec = {"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0], "flops": result.flops,
               "seconds": result.seconds, "tokens_per_s": tokens / elapsed}
        if not math.isfinite(mean_loss):
            result.diverged_at = step
            record(rec)
            break
        if (saving or last) and out_dir and not distributed.all_true(all_finite(model.parameters())):
            result.diverged_at = step  # finite loss but the update broke the weights: keep the last checkpoint
            record(rec)
            break
        if evaluating:
            rec["eval_loss"] = result.eval_loss = evaluate(model, data.eval_batches, device, causal)
        record(rec)
        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if saving:
            checkpoint(out_dir / f"checkpoint-{step}", step)
            if main:
                prune(out_dir, "checkpoint-", keep=cfg.keep_checkpoints)
        loss_sum.zero_()
        count, tokens = 0, 0
        start = time.perf_counter()
    bar.close()
    if out_dir and result.diverged_at is None:
        result.final_dir = out_dir / "final"
        checkpoint(result.final_dir, result.history[-1]["step"])
    return result
