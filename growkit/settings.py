"""The settings of a training run and of an operator's fit, as plain dataclasses.

They import no torch, so the command line shows their defaults in ``--help``
without loading it; :mod:`growkit.train` and :mod:`growkit.fit` use them.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .core.catalog import DEVICES, PRECISIONS, REPORTERS
from .core.errors import GrowError

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    """Optimiser, schedule and bookkeeping of one run; the defaults suit the small models growkit trains on CPU."""

    steps: int = 200  #: optimiser steps
    lr: float = 1e-3  #: peak learning rate (small models tolerate a high one)
    warmup: int = 20  #: steps of linear warmup from lr/warmup to lr
    schedule: str = "cosine"  #: decay after warmup: cosine, linear or constant
    min_lr_ratio: float = 0.1  #: the decay ends at lr * min_lr_ratio
    #: the decay reaches its floor at this share of ``steps`` and the lr holds there after (1: at the last step).
    #: A grown model starts trained, so it may anneal sooner than scratch (LEMON's faster decay after growth).
    decay_fraction: float = 1.0
    weight_decay: float = 0.1  #: AdamW decay, on matrices only (not biases, norms)
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0  #: max gradient norm; 0 turns clipping off
    eval_every: int = 50  #: held-out eval every k steps, plus at step 0 and at the end; 0: only at the end
    log_every: int = 1  #: a metrics record (mean train loss since the last one) every k steps
    checkpoint_every: int = 0  #: a checkpoint every N steps (0: none); out_dir always gets the final model
    keep_checkpoints: int = 0  #: keep only the newest K checkpoints (0: keep all)
    seed: int = 0  #: seeds the data order and dropout
    device: str = "cpu"  #: "cpu", "cuda", or "auto" (a GPU when there is one); CUDA trains in bf16 autocast
    precision: str = "auto"  #: "auto" (the device's policy: fp32 on CPU, bf16 autocast on CUDA), "fp32" or "bf16"
    grad_accum: int = 1  #: micro-batches per optimiser step; the global batch is their sum
    progress: bool | None = None  #: tqdm bar; None: only when stderr is a terminal
    report_to: tuple[str, ...] = ()  #: Accelerate trackers besides metrics.jsonl, e.g. ("tensorboard",)

    def check(self) -> None:
        """Refuse settings that cannot run here, before any work (a GPU that is absent, bf16 on the CPU)."""
        from .device import resolve_device, training_precision

        if self.steps < 1:
            raise GrowError(f"steps must be at least 1, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise GrowError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise GrowError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise GrowError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        training_precision(resolve_device(self.device), self.precision)  # "cuda" without a GPU is refused here
        if self.grad_accum < 1:
            raise GrowError(f"grad_accum must be at least 1, got {self.grad_accum}")
        for tracker in self.report_to:
            if tracker not in REPORTERS:
                raise GrowError(f"cannot report to {tracker!r}; growkit reports to {', '.join(REPORTERS)}")
            if not any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
                raise GrowError("reporting to tensorboard needs the tensorboard package, which is not installed: "
                                "pip install tensorboard (metrics.jsonl is written either way)")
        for name in ("warmup", "eval_every", "checkpoint_every", "keep_checkpoints", "clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise GrowError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.lr <= 0 or self.log_every < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise GrowError("lr must be positive, log_every at least 1 and min_lr_ratio within [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            raise GrowError(f"decay_fraction must be within (0, 1], got {self.decay_fraction}")


@dataclass
class FitConfig:
    """The operator's own optimiser settings.

    The defaults follow the LiGO recipe (AdamW, clipping 1.0, ~100 steps) but with
    a short warmup: the official 10,000-step warmup leaves the lr near zero for
    the whole fit. Weight decay is off because it would pull the operator away
    from its function-preserving start for no benefit over 100 steps.

    The held-out check keeps the best operator seen, the start included, so a fit
    cannot leave the target worse than its start on data it never fit on; the first
    checks come early so a fit that only hurts stops after 10 steps. ``steps`` and
    ``lr`` here are the generic values: each method names its own defaults in the
    catalog (Mango takes its function-preserving start with no fit, and fits at
    1e-4 when asked; BENCHMARKS.md, "Mango's default recipe").
    """

    steps: int = 100
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    clip: float = 1.0
    progress: bool = True
    device: str = "cpu"  #: "cpu", "cuda" or "auto"; on CUDA the target's forward runs in bf16 autocast
    #: the first held-out check after the one at step 0; the interval then doubles (5, 10, 20, 40, 80, ...)
    #: and the last step is checked too; 0: no held-out check
    first_check: int = 5
    eval_batches: int = 4  #: held-out batches, taken from the head of the data and never fit on
    #: stop after this many held-out checks without a new best; the best operator is kept; 0: no held-out check
    patience: int = 2

    def check(self) -> None:
        """Refuse settings that cannot run, before any work."""
        if self.steps < 0:
            raise GrowError(f"fit steps must not be negative, got {self.steps}")
        for name in ("first_check", "eval_batches", "patience", "warmup", "clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise GrowError(f"fit {name} must not be negative, got {getattr(self, name)}")
        if self.first_check and self.patience and self.eval_batches < 1:
            raise GrowError("a held-out check (first_check and patience > 0) needs eval_batches >= 1")
        if self.lr <= 0:
            raise GrowError(f"fit lr must be positive, got {self.lr}")

    def check_steps(self) -> list[int]:
        """The steps after which the held-out loss is checked (step 0 is checked too).

        Doubling intervals make the check cheap on a long fit and quick to stop
        one that only hurts (from a function-preserving start: after 10 steps).
        """
        if not (self.first_check and self.patience and self.steps):
            return []
        steps, at = [], self.first_check
        while at < self.steps:
            steps.append(at)
            at *= 2
        return steps + [self.steps]


