"""Method variants: one method with changed settings, run beside the others in the same benchmark.

A benchmark entry is a method name, or a method name with ``+key=value`` parts::

    mango+rank=2               grow() option rank=2
    ligo+fit_steps=300         the learned operator fits 300 steps
    mango+fit_lr=3e-3+init=interpolate

``fit_steps``, ``fit_lr`` and ``fit_patience`` (held-out checks without a new best
before the fit stops; 0 turns the check off) set the fit (learned methods only);
``train_lr``, ``train_warmup`` and ``train_decay_fraction`` set the target's peak lr, warm-up and the
share of its steps by which the lr has decayed to its floor (any entry,
scratch included: ``scratch+train_lr=3e-3`` is one point of an lr sweep); every other key
is a ``grow()`` option of the method. Otherwise a variant trains its target exactly like
every other run (the same TrainConfig and data order), so an ablation of an
operator's recipe reuses the benchmark's scratch and fixed-method runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.errors import GrowError
from ..settings import TrainConfig

FIT_KEYS = ("fit_steps", "fit_lr", "fit_patience")
#: the target's schedule, as TrainConfig's lr, warmup and decay_fraction
TRAIN_KEYS = ("train_lr", "train_warmup", "train_decay_fraction")


def parse_value(text: str):
    """An option's value from the command line: int, float, bool, else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@dataclass(frozen=True)
class Variant:
    """A benchmark entry: the method, its grow() options and fit overrides."""

    name: str  #: as written, e.g. "mango+rank=2"; names the run folder and the report row
    method: str
    options: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  #: train_lr / train_warmup / train_decay_fraction


def parse_variant(entry: str, defaults: dict | None = None) -> Variant:
    """Parse ``method+key=value+...``; ``defaults`` are the preset's options for the method."""
    method, *parts = entry.strip().split("+")
    if not method:
        raise GrowError(f"empty method name in {entry!r}")
    options, fit, train = dict(defaults or {}), {}, {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not (eq and key):
            raise GrowError(f"{entry!r}: variant parts take key=value (e.g. mango+rank=2), not {part!r}")
        (fit if key in FIT_KEYS else train if key in TRAIN_KEYS else options)[key] = parse_value(value)
    check_train(train, entry)
    for key in ("fit_steps", "fit_patience"):
        if key in fit and (not isinstance(fit[key], int) or fit[key] < 0):
            raise GrowError(f"{entry!r}: {key} must be a non-negative integer")
    if "fit_lr" in fit and (not isinstance(fit["fit_lr"], (int, float)) or fit["fit_lr"] <= 0):
        raise GrowError(f"{entry!r}: fit_lr must be positive")
    if method == "scratch" and (options or fit):
        raise GrowError("scratch takes no options but train_lr, train_warmup and train_decay_fraction: it is a fresh random init of the target")
    return Variant(entry.strip(), method, options, fit, train)


def with_schedule(cfg: TrainConfig, train: dict) -> TrainConfig:
    """``cfg`` with a run's own schedule fields set (``train_lr`` -> ``lr``, ``train_warmup`` -> ``warmup``, ...)."""
    return dataclasses.replace(cfg, **{key.removeprefix("train_"): value for key, value in train.items()})


def check_train(train: dict, where: str) -> None:
    """Refuse a schedule that cannot train: train_lr positive, train_warmup a non-negative integer,
    train_decay_fraction within (0, 1]."""
    if "train_lr" in train and (not isinstance(train["train_lr"], (int, float)) or train["train_lr"] <= 0):
        raise GrowError(f"{where}: train_lr must be positive")
    if "train_warmup" in train and (not isinstance(train["train_warmup"], int) or train["train_warmup"] < 0):
        raise GrowError(f"{where}: train_warmup must be a non-negative integer")
    fraction = train.get("train_decay_fraction", 1)
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise GrowError(f"{where}: train_decay_fraction must be within (0, 1]")
