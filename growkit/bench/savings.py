"""Savings: the compute a run spends to first reach a loss, and how much less than scratch that is.

The protocol (design.md, "Evaluation protocol"): the target loss is scratch's
own final eval loss. C_scratch is the compute scratch spends to first reach it;
C_method the compute a grown run spends to first reach it, interpolating
linearly between evaluations, plus the operator's fit compute. The training
loop starts a grown run's cumulative FLOPs and seconds at the fit's cost
(``flops_offset``/``seconds_offset``), so a :class:`Curve` built from its
history already includes that cost: its first point sits at x = fit cost.
Savings = 1 - C_method / C_scratch. A run that never reaches the target has no
cost and no savings ("not reached").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

AXES = ("step", "flops", "seconds")
#: the savings curve's points: the losses scratch reaches at these fractions of its budget
CURVE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Curve:
    """A run's evaluations: step, cumulative FLOPs and seconds (fit cost included) and eval loss."""

    step: list[float]
    flops: list[float]
    seconds: list[float]
    loss: list[float]

    @classmethod
    def from_history(cls, history: Sequence[dict]) -> "Curve":
        """The evaluated records of a training history (``growkit.train`` records)."""
        evals = [r for r in history if "eval_loss" in r]
        return cls([r["step"] for r in evals], [r["flops"] for r in evals], [r["seconds"] for r in evals],
                   [r["eval_loss"] for r in evals])

    def axis(self, name: str) -> list[float]:
        if name not in AXES:
            raise ValueError(f"unknown axis {name!r}; use one of {', '.join(AXES)}")
        return getattr(self, name)

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if self.loss else math.nan


def first_reach(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The first x at which the piecewise-linear curve (xs, losses) gets down to ``target``, or None.

    Between two evaluations the loss is taken to change linearly in x; a
    non-finite loss ends the curve.
    """
    if len(xs) != len(losses):
        raise ValueError("xs and losses differ in length")
    prev = None
    for x, loss in zip(xs, losses):
        if not math.isfinite(loss):
            return None
        if loss <= target:
            if prev is None:
                return float(x)
            x0, l0 = prev
            return float(x0 + (x - x0) * (l0 - target) / (l0 - loss))
        prev = (x, loss)
    return None


@dataclass
class Reach:
    """Where a curve first reaches the target loss, on every axis (None: not reached)."""

    target: float
    step: float | None
    flops: float | None
    seconds: float | None

    @property
    def reached(self) -> bool:
        return self.flops is not None


def reach(curve: Curve, target: float) -> Reach:
    return Reach(target, *(first_reach(curve.axis(a), curve.loss, target) for a in AXES))


def savings(c_method: float | None, c_scratch: float | None) -> float | None:
    """1 - C_method / C_scratch, or None when either was not reached."""
    if c_method is None or c_scratch is None or c_scratch <= 0:
        return None
    return 1.0 - c_method / c_scratch


@dataclass
class Comparison:
    """One run against its scratch run (same seed): reach, savings and equal-budget loss."""

    method: str
    final_loss: float
    reach: Reach
    flop_savings: float | None
    wall_savings: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def compare(method: str, curve: Curve, scratch: Curve) -> Comparison:
    """Savings of ``curve`` against ``scratch`` at scratch's final eval loss."""
    target = scratch.final_loss
    base, mine = reach(scratch, target), reach(curve, target)
    return Comparison(method, curve.final_loss, mine, savings(mine.flops, base.flops),
                      savings(mine.seconds, base.seconds))


def loss_at(xs: Sequence[float], losses: Sequence[float], x: float) -> float:
    """The piecewise-linear curve's loss at ``x`` (clamped to its ends)."""
    if x <= xs[0]:
        return losses[0]
    for (x0, l0), (x1, l1) in zip(zip(xs, losses), zip(xs[1:], losses[1:])):
        if x <= x1:
            return l0 + (l1 - l0) * (x - x0) / (x1 - x0) if x1 > x0 else l1
    return losses[-1]


def savings_curve(curve: Curve, scratch: Curve, fractions: Sequence[float] = CURVE_FRACTIONS) -> dict[float, float | None]:
    """FLOP savings at the losses scratch reaches at each fraction of its budget (interpolated between evaluations).

    At fraction 1 this is :func:`compare`'s savings. A head start that holds shows
    level savings; one that fades, savings falling towards the end.
    """
    out = {}
    for fraction in fractions:
        target = loss_at(scratch.step, scratch.loss, fraction * scratch.step[-1])
        out[fraction] = savings(first_reach(curve.flops, curve.loss, target), first_reach(scratch.flops, scratch.loss, target))
    return out


def back_to(curve: Curve, loss: float) -> tuple[float | None, float]:
    """Once training has started: the step at which the run is back down at ``loss``, and its highest
    eval loss until then (over the whole run if never).

    A trained model's loss first rises when training starts again at a high learning rate (the
    schedule warms up anew), so a start at the small model's loss spends its first steps
    climbing back there. The step is interpolated between evaluations, from the first one after
    step 0 on; None: never back.
    """
    step = first_reach(curve.step[1:], curve.loss[1:], loss)
    until = [value for s, value in zip(curve.step[1:], curve.loss[1:]) if step is None or s <= step]
    return step, max(until, default=math.nan)


def convergence(curve: Curve, fraction: float = 0.2) -> float:
    """Relative eval-loss improvement over the last ``fraction`` of the steps: (L(start) - L(end)) / L(start).

    The protocol asks that scratch's be below ~2%, else the budget is too short
    and savings measure only the head start.
    """
    last = curve.step[-1]
    start = loss_at(curve.step, curve.loss, last * (1 - fraction))
    return (start - curve.final_loss) / start
