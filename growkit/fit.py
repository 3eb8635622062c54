"""Fit a learned growth operator on the target model's own loss.

The target's weights are never parameters here: each step materialises them from
the operator and runs the target through ``torch.func.functional_call``, so the
gradient reaches only the operator (and the frozen source stays untouched).

Under a multi-process launch the operator is replicated (rank 0's parameters are
broadcast at the start), every process computes the target's loss on its block
of each global batch, weighted by its share of the batch's items, and the
operator's gradients are summed over the processes in one flat all-reduce: the
update, and so the fitted operator, is the single-process one (see
:mod:`growkit.distributed`). Only rank 0 writes fit checkpoints. On CUDA the
target's forward runs under bf16 autocast; the operator's own forward (the
materialisation) always runs in fp32 (see :mod:`growkit.device`).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch.func import functional_call

from . import distributed
from .arch import Adapter, predicts_next_token
from .core.errors import GrowError
from .device import DEVICES, autocast_context, resolve_device, use_attention
from .ops.operator import GrowthOperator
from .progress import progress_bar
from .resumable.checkpoints import all_finite, numbered, prune, save_checkpoint
from .resumable.folder import digest_tensors
from .resumable.rng import restore_rng
from .resumable.state import load_state, save_state
from .settings import FitConfig


class FitWarning(UserWarning):
    """The fit stopped early (a non-finite loss); the last finite (or the best held-out) operator was kept."""


#: fit checkpoints are ``fit-<step>.safetensors`` files in the checkpoint folder
CHECKPOINT_PREFIX, CHECKPOINT_SUFFIX = "fit-", ".safetensors"


@dataclass
class FitResult:
    operator: GrowthOperator
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    diverged_at: int | None = None  #: the step (counted from 1) whose loss was not finite
    held_out: list[tuple[int, float]] = field(default_factory=list)  #: (step, held-out loss) of every check
    best_step: int | None = None  #: the step whose operator was kept (None without a held-out check)
    stopped_at: int | None = None  #: the step where the held-out check ended the fit early


def batch_stream(data: Any, seed: int = 0, start: int = 0) -> Iterator[dict]:
    """Endless batches from a growkit ``TaskData`` or any re-iterable of batch dicts, from batch ``start`` on."""
    if hasattr(data, "train_batches"):
        yield from data.train_batches(seed, start=start)
        return
    if data is None:
        raise GrowError("a learned method needs training data: pass data= (batches with labels) or --data")
    while True:
        empty = True
        for batch in data:
            empty = False
            if start:
                start -= 1
                continue
            yield batch
        if empty:
            raise GrowError("the training data yielded no batches")


def target_output(operator: GrowthOperator, model: torch.nn.Module, adapter: Adapter, batch: dict,
                  device: str | torch.device = "cpu", tensors: dict[str, torch.Tensor] | None = None) -> Any:
    """The target model's output on ``batch`` with the operator's current weights.

    The operator materialises the weights in fp32 (pass ``tensors`` to reuse one
    materialisation over several batches); only the target's forward runs under
    ``device``'s autocast (bf16 on CUDA, none on the CPU).
    """
    tensors = operator() if tensors is None else tensors
    params = adapter.hf_state_dict(tensors, model, operator.source_meta.tied, operator.source_meta.extra)
    with autocast_context(device):
        return functional_call(model, params, args=(), kwargs=batch, strict=False)


def target_loss(operator: GrowthOperator, model: torch.nn.Module, adapter: Adapter, batch: dict,
                device: str | torch.device = "cpu", tensors: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The target model's loss on ``batch`` with the operator's current weights."""
    out = target_output(operator, model, adapter, batch, device, tensors)
    if getattr(out, "loss", None) is None:
        raise GrowError("the model returned no loss: the batches need labels")
    return out.loss


def _copy_state(operator: GrowthOperator) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in operator.state_dict().items()}


def _on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def fit_settings(config: FitConfig, seed: int) -> dict:
    """What decides a fit's result (its checkpoints are resumed only under the same)."""
    return {**{k: v for k, v in asdict(config).items() if k != "progress"}, "seed": seed}


def latest_fit_checkpoint(folder: str | Path | None) -> tuple[int, Path] | None:
    """The newest ``fit-<step>.safetensors`` in ``folder`` (written atomically, so present means whole)."""
    if folder is None:
        return None
    found = numbered(Path(folder), CHECKPOINT_PREFIX, CHECKPOINT_SUFFIX)
    return found[-1] if found else None


def fit(
    operator: GrowthOperator,
    model: torch.nn.Module,
    adapter: Adapter,
    data: Iterable[dict] | Any,
    config: FitConfig | None = None,
    seed: int = 0,
    *,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
) -> FitResult:
    """Train only ``operator``'s parameters for ``config.steps`` steps on the target's loss.

    ``model`` is a target-shaped model used as the function to call; its own
    weights are ignored. With ``config.check_steps()`` the first ``eval_batches``
    batches are held out: the operator's loss on them is checked at step 0 and
    at ``config.check_steps()``, the fit stops after ``patience`` checks without a
    new best, and the best operator checked (the start included) is the one kept.
    A non-finite loss stops the fit at that step and restores the last operator
    whose loss was finite, or the best held-out one (with a :class:`FitWarning`).
    The fit runs under its own RNG, seeded by ``seed``, so dropout draws repeat
    and the caller's generator is left as it was.

    With ``checkpoint_dir`` and ``checkpoint_every`` the fit writes its state
    (operator, optimiser, scheduler, RNG, data position, losses) every
    ``checkpoint_every`` steps to ``checkpoint_dir/fit-<step>.safetensors``,
    keeping the newest, and resumes from the newest one it finds there; the
    resumed fit equals an uninterrupted one bit for bit on the same machine.
    """
    config = config or FitConfig()
    config.check()
    if checkpoint_every < 0:
        raise GrowError(f"checkpoint_every must not be negative, got {checkpoint_every}")
    if config.device not in DEVICES:
        raise GrowError(f"device must be one of {', '.join(DEVICES)}, got {config.device!r}")
    device = resolve_device(config.device)
    distributed.setup(device)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    if device.type != "cpu":
        operator.to(device)
        model.to(device)
    use_attention(model, device)
    distributed.broadcast_parameters(operator)  # a replica per process, all starting as rank 0's
    causal = predicts_next_token(model)
    params = [p for p in operator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(config.warmup, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    result = FitResult(operator)
    settings = fit_settings(config, seed)
    last_good = _copy_state(operator)
    best_loss, best_state, bad = math.inf, last_good, 0
    done, state = 0, None
    found = latest_fit_checkpoint(checkpoint_dir)
    if found is not None:
        done, path = found
        state = load_state(path)
        if state.get("settings") != settings:
            raise GrowError(f"{path} was written by a fit with other settings; rerun the same command, or delete it")
        try:
            with torch.no_grad():
                operator.load_state_dict(state["operator"])
        except RuntimeError as err:
            raise GrowError(f"{path} does not fit this operator: {' '.join(str(err).split())[:200]}") from None
        last_good = {k: v.clone() for k, v in state["last_good"].items()}
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.losses = list(state["losses"])
        result.seconds = state["seconds"]
        result.held_out = [(int(step), float(loss)) for step, loss in state["held_out"]]
        best_loss, bad, result.best_step = state["best_loss"], state["bad"], state["best_step"]
        best_state = {k: v.clone() for k, v in state["best"].items()}

    def save(step: int) -> None:
        def write(rng: dict) -> None:
            save_state(
                Path(checkpoint_dir) / f"{CHECKPOINT_PREFIX}{step}{CHECKPOINT_SUFFIX}",
                {"step": step, "operator": operator.state_dict(), "last_good": last_good,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "losses": result.losses, "seconds": result.seconds + time.perf_counter() - start,
                 "held_out": result.held_out, "best": best_state, "best_loss": best_loss, "bad": bad,
                 "best_step": result.best_step, "settings": settings, **rng},
            )
            prune(Path(checkpoint_dir), CHECKPOINT_PREFIX, CHECKPOINT_SUFFIX, keep=1)

        save_checkpoint(write)

    def batch_loss(full: dict, step: int, tensors: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, float]:
        """The global batch's loss (differentiable on this process's share) and its value."""
        if world == 1:
            loss = target_loss(operator, model, adapter, _on(full, device), device, tensors)
            return loss, loss.item()
        distributed.check_batch(distributed.batch_rows(full))
        if step == done:
            distributed.check_same(digest_tensors(full), "the first training batch")
        part, weight, items = distributed.shard(full, causal)
        loss = distributed.weighted_loss(target_output(operator, model, adapter, _on(part, device), device, tensors),
                                         weight, items)
        return loss, distributed.all_reduce_sum(loss.detach().float().clone()).item()

    check_steps = set(config.check_steps())
    holdout = list(itertools.islice(batch_stream(data, seed), config.eval_batches)) if check_steps else []

    def check(step: int) -> bool:
        """Record the held-out loss at ``step``, keep the best operator; True when the fit should stop."""
        nonlocal best_loss, best_state, bad
        model.eval()
        with torch.no_grad():
            tensors = operator()
            value = sum(batch_loss(b, -1, tensors)[1] for b in holdout) / len(holdout)
        model.train()
        result.held_out.append((step, value))
        if value < best_loss:
            best_loss, best_state, bad, result.best_step = value, _copy_state(operator), 0, step
        else:
            bad += 1
        return bad >= config.patience

    model.train()
    bar = progress_bar(config.steps, "fit", config.progress, initial=done, leave=False, main=main)
    start = time.perf_counter()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), contextlib.closing(bar):  # an interrupt's message is not redrawn over
        torch.manual_seed(seed + rank)  # dropout: one stream per process (the data order is the global one)
        if state is not None:
            restore_rng(state, rank)
        stream = batch_stream(data, seed, start=len(holdout) + done)
        if holdout and config.steps and not result.held_out:
            check(0)
        for step in range(done, config.steps):
            loss, value = batch_loss(next(stream), step)
            if not math.isfinite(value):
                operator.load_state_dict(last_good)
                result.diverged_at = step + 1  # steps count from 1, as in training: step k ends with k updates
                kept = f"the operator after step {step - 1}" if step > 1 else "the start"
                if holdout:
                    kept = f"the best held-out operator (step {result.best_step or 0})"
                warnings.warn(f"fit stopped at step {step + 1}: the loss is {value}; kept {kept}", FitWarning, stacklevel=2)
                break
            last_good = _copy_state(operator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_grads(params)  # the weighted losses' gradients sum to the global batch's
            if config.clip:
                torch.nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            scheduler.step()
            result.losses.append(value)
            bar.set_postfix(loss=f"{value:.4f}")
            bar.update()
            finished = step + 1
            if holdout and finished in check_steps and check(finished):
                result.stopped_at = finished
                break
            if checkpoint_dir is not None and checkpoint_every and finished % checkpoint_every == 0 \
                    and finished < config.steps and all_finite(params):
                save(finished)
    if holdout and result.held_out:
        operator.load_state_dict(best_state)
    result.seconds += time.perf_counter() - start
    model.eval()
    if device.type != "cpu":  # hand back CPU modules: the grown model is built and saved from the operator
        operator.to("cpu")
        model.to("cpu")
    return result
