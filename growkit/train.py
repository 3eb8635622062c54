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

A resumable run (``resume=True``) claims its folder itself, with the pieces of
:mod:`growkit.resumable`: the folder checks, the run's identity in ``run.json``,
the lock, numbered checkpoints written save-then-barrier and per-process RNG
state. ``growkit train`` only parses its arguments and calls :func:`train`.
"""
from __future__ import annotations

import contextlib
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
from transformers import PreTrainedModel

from . import distributed
from .arch import predicts_next_token
from .core.errors import GrowError
from .data import TaskData, TokenTaskData, data_digest
from .device import resolve_device, training_precision, use_attention
from .flops import batch_tokens, flops_per_batch
from .io import STATE_FILE, load_pretrained, load_training_state, save_pretrained
from .progress import progress_bar
from .resumable.atomic import atomic_write_text, remove
from .resumable.checkpoints import all_finite, numbered, prune, save_checkpoint
from .resumable.folder import check_unused, claim, digest_tensors, read_run
from .resumable.rng import restore_rng
from .settings import TrainConfig


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
    """The multiplier of ``cfg.lr`` at each step: linear warmup, then the chosen decay to ``min_lr_ratio``,
    reached at ``decay_fraction`` of the steps and held after."""
    decay_end = round(cfg.steps * cfg.decay_fraction)

    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup) / max(1, decay_end - cfg.warmup))
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
            causal = predicts_next_token(_config(model))
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


def check_out_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    """Refuse a bad output folder before any work (the command runs this before it loads the model).

    A new or empty folder is fine. With ``resume`` so is one that holds a run
    (``run.json``) which ``cfg`` may go on with (see :func:`resume_point`);
    whether it is this very run is checked when :func:`train` claims it.
    Nothing in the folder is touched.
    """
    out_dir = Path(out_dir)
    if check_unused(out_dir, allowed=resume and read_run(out_dir) is not None):
        resume_point(out_dir, cfg)


def _prepare_out(out_dir: Path | None, resume: bool, cfg: TrainConfig) -> Path | None:
    if out_dir is None:
        if resume:
            raise GrowError("resume=True needs the out_dir that holds the run's checkpoints")
        if cfg.report_to:
            raise GrowError(f"reporting to {', '.join(cfg.report_to)} needs an out_dir to write to")
        return None
    out_dir = Path(out_dir)
    check_out_dir(out_dir, cfg, resume)
    if not resume:  # a resumable run's folder is made when it is claimed, once every process agrees on the run
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


#: config entries that describe a model's files, not what it computes
_STORAGE_FACTS = ("architectures", "dtype", "torch_dtype", "transformers_version")


def run_identity(model: PreTrainedModel, data: TaskData | TokenTaskData, cfg: TrainConfig) -> dict:
    """What a resumable run is, for its ``run.json``: the starting weights and config, the data and the settings.

    The config leaves out what only says how the model was stored (its dtype,
    class names, library version), so the same weights loaded another way are
    the same run.
    """
    config = {k: v for k, v in json.loads(model.config.to_json_string(use_diff=True)).items()
              if not k.startswith("_") and k not in _STORAGE_FACTS}
    return {"command": "train", "model": {"weights": digest_tensors(model.state_dict()), "config": config},
            "data": data_digest(data), "settings": _comparable(asdict(cfg))}


def _extends(old: dict | None, new: dict) -> bool:
    """Whether run.json ``old`` is the run ``new`` with fewer steps (an extension, which :func:`resume_point` vetted)."""
    if old is None or not isinstance(old.get("settings"), dict):
        return False
    canon = json.loads(json.dumps(new))
    shorter = {**canon, "settings": {**canon["settings"], "steps": old["settings"].get("steps")}}
    return old == shorter and old["settings"]["steps"] < canon["settings"]["steps"]


def _claim_out(stack: contextlib.ExitStack, out_dir: Path, run: dict, steps: int) -> None:
    """Every process agrees on ``run``; rank 0 claims ``out_dir`` (identity and lock) for the stack's life.

    A run extended to ``steps`` drops the shorter run's ``final`` (its last
    checkpoint keeps that model, and the longer run writes its own).
    """
    distributed.check_same(run, "the model, data or settings")
    distributed.barrier()

    def claim_folder() -> None:
        extending = _extends(read_run(out_dir), run)
        claim(stack, out_dir, run, "training run", extending=extending)
        found = latest_checkpoint(out_dir)
        if extending:
            remove(out_dir / "final")
            print(f"extending the run from step {found[0]} to {steps} (constant schedule: the same as an "
                  f"uninterrupted {steps}-step run)", file=sys.stderr)
        elif found:
            print(f"resuming from step {found[0]} ({found[1]})", file=sys.stderr)

    distributed.on_main(claim_folder)


#: settings that may change between a run and its resumption (they do not change the result)
_RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoints", "progress", "report_to")


def _comparable(cfg: dict) -> dict:
    full = {**asdict(TrainConfig()), **cfg}  # a checkpoint from before a setting existed had its default
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in full.items() if k not in _RESUMABLE_CHANGES}


def resume_point(out_dir: Path, cfg: TrainConfig) -> tuple[int, Path] | None:
    """The checkpoint in ``out_dir`` that a run with ``cfg`` goes on from (None: it starts over).

    A finished run goes on only when ``cfg.steps`` is larger (an extension) and
    the longer run would have followed the same learning-rate schedule: the
    constant one. Under a decaying schedule a longer run differs from its first
    step past the warmup, so the extension is refused with that reason. Any
    other change of settings is refused too.
    """
    found = latest_checkpoint(out_dir)
    finished = (out_dir / "final").exists()
    if found is None:
        if finished:
            raise GrowError(f"output folder {out_dir} holds a finished run that kept no checkpoint (--checkpoint-every 0), "
                            "so it cannot be extended; choose a new folder")
        return None
    step, folder = found
    if finished and step >= cfg.steps:
        raise GrowError(f"output folder {out_dir} holds a finished {step}-step run; choose a new folder, "
                        f"or pass a --steps larger than {step} to extend it")
    old, new = _comparable(load_training_state(folder, tensors=False).get("config", {})), _comparable(asdict(cfg))
    changed = sorted(k for k in new if old.get(k) != new[k])
    if changed == ["steps"] and cfg.steps > step and cfg.schedule != "constant":
        raise GrowError(
            f"{out_dir} holds a run of {old['steps']} steps whose {cfg.schedule} learning-rate schedule depends on "
            f"that length, so a {cfg.steps}-step run would have followed another schedule from step {cfg.warmup} on "
            f"and it cannot be extended exactly; train {out_dir / 'final' if finished else folder} in a new folder "
            "(a fresh optimiser), or use --schedule constant for runs you mean to extend"
        )
    if changed and changed != ["steps"]:
        raise GrowError(f"{folder} was written with other training settings ({', '.join(changed)}); rerun the same "
                        "command, or start in a new folder")
    return found


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

    With ``resume=True`` the run claims ``out_dir``: it records what the run
    is in ``run.json`` (see :func:`run_identity`) and locks the folder while it
    trains, so another run's checkpoints and a second process on the same
    folder are refused. A folder holding this run's checkpoints goes on from
    the newest (weights, optimiser, scheduler, RNG states, data position and
    counters), and the result equals an uninterrupted run's bit for bit on the
    same machine; ``model`` must hold the run's starting weights (the
    checkpoint's are loaded into it). Without a checkpoint the run starts over.
    A finished run with a constant schedule is extended by a larger
    ``cfg.steps`` (see :func:`resume_point`). A run without ``resume`` writes
    no ``run.json`` and so cannot be resumed.

    ``final`` holds only the model and its tokenizer; the resumable state of
    the last step is kept in ``checkpoint-<step>`` when checkpoints are on.
    Each step accumulates the gradients of ``cfg.grad_accum`` batches, so the
    global batch (and the step's FLOPs) is that many times the data's batch.
    """
    cfg.check()
    device = resolve_device(cfg.device)
    distributed.setup(device)
    if distributed.world_size() > 1:
        distributed.check_batch(data.batch_size)
    # rank 0 checks the folder (and makes it, without resume); its refusal stops every rank
    out_dir = distributed.on_main(_prepare_out, out_dir, resume, cfg)
    with contextlib.ExitStack() as stack:
        if resume:  # named by the starting weights, so before a checkpoint's are loaded into the model
            _claim_out(stack, out_dir, run_identity(model, data, cfg), cfg.steps)
        return _run(model, data, cfg, out_dir, device, resume=resume, flops_offset=flops_offset,
                    seconds_offset=seconds_offset)


def _run(model: PreTrainedModel, data: TaskData | TokenTaskData, cfg: TrainConfig, out_dir: Path | None,
         device: torch.device, *, resume: bool, flops_offset: float, seconds_offset: float) -> TrainResult:
    """The loop of :func:`train`, in the folder it prepared (and claimed, when it resumes)."""
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    torch.manual_seed(cfg.seed + rank)  # dropout: one stream per process (the data order is the global one)
    done, state = 0, None
    found = latest_checkpoint(out_dir) if resume else None
    if found is not None:
        done, folder = found
        state = load_training_state(folder)
        _restore(model, folder)
    use_attention(model, device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=training_precision(device, cfg.precision).mixed_precision,
                              log_with=list(cfg.report_to) or None, project_dir=str(out_dir) if out_dir else None)
    if cfg.report_to:
        accelerator.init_trackers("tensorboard", config=_tracker_settings(cfg))
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
    causal = predicts_next_token(config)
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
        if cfg.report_to:
            accelerator.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])

    def checkpoint(folder: Path, step: int, resumable: bool = True) -> None:
        weights = accelerator.get_state_dict(model) if fsdp else None  # FSDP: gathered from the shards (collective)

        def write(rng: dict) -> None:
            state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "flops": result.flops, "seconds": result.seconds, "config": asdict(cfg), **rng}
            if fsdp or not resumable:  # FSDP: the optimiser state is sharded; final: the model alone
                state = None
            save_pretrained(accelerator.unwrap_model(model), folder, data.tokenizer, overwrite=True, state=state,
                            state_dict=weights)

        save_checkpoint(write)

    if cfg.eval_every and state is None:
        record({"step": 0, "eval_loss": evaluate(model, data.eval_batches, device, causal),
                "flops": result.flops, "seconds": result.seconds})
    model.train()
    if state is not None:
        restore_rng(state, rank)
    stream = data.train_batches(cfg.seed, start=done * cfg.grad_accum)
    first = next(stream)  # every train batch has this shape, so one count serves all steps
    # counted for the global batch: the FLOPs and tokens of all processes and accumulated batches together
    step_flops = flops_per_batch(config, first) * cfg.grad_accum
    step_tokens = batch_tokens(config, first) * cfg.grad_accum
    if world > 1:
        distributed.check_same(digest_tensors(first), "the first training batch")
    stream = itertools.chain([first], stream)
    bar = progress_bar(cfg.steps, "train", sys.stderr.isatty() if cfg.progress is None else cfg.progress,
                       initial=done, main=main)
    loss_sum, count, tokens = torch.zeros((), device=device), 0, 0
    start = time.perf_counter()
    with contextlib.closing(bar):  # closed before an interrupt's message is printed, not redrawn after it
        for step in range(done + 1, cfg.steps + 1):
            for micro in range(cfg.grad_accum):  # gradients sync once per step, on its last batch
                with accelerator.no_sync(model) if micro < cfg.grad_accum - 1 else contextlib.nullcontext():
                    loss = _micro_step(model, next(stream), accelerator, causal, world, device, cfg.grad_accum)
                loss_sum += loss.detach()
            if cfg.clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            count += 1
            tokens += step_tokens
            result.flops += step_flops
            bar.update()
            last = step == cfg.steps
            evaluating = last or (cfg.eval_every and step % cfg.eval_every == 0)
            saving = bool(out_dir) and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or last)
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
            if saving:  # the last step's too, so a finished run can be extended
                checkpoint(out_dir / f"checkpoint-{step}", step)
                if main:
                    prune(out_dir, "checkpoint-", keep=cfg.keep_checkpoints)
            loss_sum.zero_()
            count, tokens = 0, 0
            start = time.perf_counter()
    if out_dir and result.diverged_at is None:
        result.final_dir = out_dir / "final"
        checkpoint(result.final_dir, result.history[-1]["step"], resumable=False)
    if cfg.report_to:
        accelerator.end_training()
    return result


def _micro_step(model, batch: dict, accelerator: Accelerator, causal: bool, world: int, device,
                accumulate: int) -> torch.Tensor:
    """Forward and backward of one of a step's ``accumulate`` batches.

    The loss returned (and differentiated) is this process's share of the step's
    mean loss: the batch's mean loss divided by ``accumulate``.
    """
    if world == 1:
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
    else:  # this process's block; DDP averages the gradients, so world * weight makes them sum to the global one
        part, weight, items = distributed.shard(batch, causal)
        loss = distributed.weighted_loss(model(**{k: v.to(device) for k, v in part.items()}), weight, items)
    if accumulate > 1:
        loss = loss / accumulate
    accelerator.backward(loss * world if world > 1 else loss)
    return loss


def _tracker_settings(cfg: TrainConfig) -> dict:
    """The run's settings as the plain values trackers record (TensorBoard's hparams take no tuples or None)."""
    return {k: str(v) if isinstance(v, (tuple, list)) or v is None else v for k, v in asdict(cfg).items()}
