"""Fit a learned growth operator on the target model's own loss.

The target's weights are never parameters here: each step materialises them from
the operator and runs the target through ``torch.func.functional_call``, so the
gradient reaches only the operator (and the frozen source stays untouched).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from .arch import Adapter
from .core.errors import GrowError
from .ops.operator import GrowthOperator


@dataclass
class FitConfig:
    """The operator's own optimiser settings.

    The defaults follow the LiGO recipe (AdamW, clipping 1.0, ~100 steps) but with
    a short warmup: the official 10,000-step warmup leaves the lr near zero for
    the whole fit. Weight decay is off because it would pull the operator away
    from its function-preserving start for no benefit over 100 steps.
    """

    steps: int = 100
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    clip: float = 1.0
    progress: bool = True


@dataclass
class FitResult:
    operator: GrowthOperator
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    diverged_at: int | None = None


def batch_stream(data: Any, seed: int = 0) -> Iterator[dict]:
    """Endless batches from a growkit ``TaskData`` or any re-iterable of batch dicts."""
    if hasattr(data, "train_batches"):
        yield from data.train_batches(seed)
        return
    if data is None:
        raise GrowError("a learned method needs training data: pass data= (batches with labels) or --data")
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise GrowError("the training data yielded no batches")


def target_loss(operator: GrowthOperator, model: torch.nn.Module, adapter: Adapter, batch: dict) -> torch.Tensor:
    """The target model's loss on ``batch`` with the operator's current weights."""
    tensors = operator()
    params = adapter.hf_state_dict(tensors, model, operator.source_meta.tied)
    out = functional_call(model, params, args=(), kwargs=batch, strict=False)
    if getattr(out, "loss", None) is None:
        raise GrowError("the model returned no loss: the batches need labels")
    return out.loss


def fit(
    operator: GrowthOperator,
    model: torch.nn.Module,
    adapter: Adapter,
    data: Iterable[dict] | Any,
    config: FitConfig | None = None,
    seed: int = 0,
) -> FitResult:
    """Train only ``operator``'s parameters for ``config.steps`` steps on the target's loss.

    ``model`` is a target-shaped model used as the function to call; its own
    weights are ignored. A non-finite loss stops the fit at that step and
    restores the last operator whose loss was finite.
    """
    config = config or FitConfig()
    params = [p for p in operator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(config.warmup, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    result = FitResult(operator)
    model.train()
    stream = batch_stream(data, seed)
    last_good = {k: v.detach().clone() for k, v in operator.state_dict().items()}
    bar = tqdm(range(config.steps), desc="fit", disable=not config.progress, leave=False)
    start = time.perf_counter()
    for step in bar:
        loss = target_loss(operator, model, adapter, next(stream))
        value = loss.item()
        if not math.isfinite(value):
            operator.load_state_dict(last_good)
            result.diverged_at = step
            warnings.warn(f"fit stopped at step {step}: the loss is {value}; kept the operator of step {step - 1}")
            break
        last_good = {k: v.detach().clone() for k, v in operator.state_dict().items()}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip:
            torch.nn.utils.clip_grad_norm_(params, config.clip)
        optimizer.step()
        scheduler.step()
        result.losses.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
