"""What growkit offers, by name: methods, operators, devices and precisions.

Plain data, no torch: the command line builds its parser, lists the methods and
refuses a misspelt name or an option a method ignores from this module alone,
so ``growkit --help`` and ``growkit methods`` start in a fraction of a second.
The operators themselves (:mod:`growkit.ops`) register against these names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .errors import GrowError

#: width operators (:data:`growkit.ops.registry.WIDTH_OPERATORS` implements each: unit copies and tiling in
#: :mod:`growkit.ops.width`, zero-extension in :mod:`growkit.ops.zero_width`)
WIDTH_OPS = ("net2net", "aki", "tile", "zero")
#: depth operators (:data:`growkit.ops.depth.DEPTH_OPERATORS` implements each)
DEPTH_OPS = ("stack", "interpolate", "identity")
#: the device names the command line accepts
DEVICES = ("cpu", "auto", "cuda")
#: the training precisions: ``auto`` is the device's own policy (see :mod:`growkit.device`)
PRECISIONS = ("auto", "fp32", "bf16")
#: the Accelerate trackers a training run can report to, besides its metrics.jsonl
REPORTERS = ("tensorboard",)


@dataclass(frozen=True)
class Option:
    """A ``grow()`` option a method takes: its name, the type its value must have, and that type in words."""

    name: str
    kind: type
    what: str

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool):
            return self.kind is bool
        return isinstance(value, (int, float) if self.kind is float else self.kind)


NOISE = Option("noise", float, "a number")
RANK = Option("rank", int, "an integer")
INIT = Option("init", str, "a method name")
SPLIT = Option("split", str, "'even' or 'keep'")
MIX = Option("mix", float, "a number")


@dataclass(frozen=True)
class MethodInfo:
    """A method's name, summary and the ``grow()`` options it takes; fixed methods name their two operators.

    ``uneven_width`` is the width operator used instead of ``width`` where a
    growth factor is not a whole number (``exact``: zero-extension, for RMSNorm models).
    ``fit_steps`` and ``fit_lr`` are how long and how fast a learned method fits
    when not told: 0 steps means it returns its start (and needs no data), which
    is Mango's measured best; asked to fit, Mango does best at a tenth of LiGO's
    lr (see :mod:`growkit.ops.mango.operator`).
    """

    name: str
    summary: str
    width: str | None = None
    depth: str | None = None
    options: tuple[Option, ...] = field(default=(NOISE,))
    uneven_width: str | None = None
    fit_steps: int = 100
    fit_lr: float = 1e-3

    @property
    def learned(self) -> bool:
        return self.width is None

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(option.name for option in self.options)

    def kind(self) -> str:
        return "a learned method" if self.learned else "a fixed method"

    def check_options(self, options: dict, also: tuple[str, ...] = (), spell=lambda option: f"{option}=") -> None:
        """Refuse what this method would ignore, and option values of the wrong type, before any work.

        The one place options are checked: ``grow()``, the command line (``spell``
        names them as flags) and a learned method's ``build`` all call it. ``also``
        names the arguments the caller itself takes (a fit's ``steps=``...).
        """
        refuse_unused(self.name, list(options), [*self.option_names, *also], spell)
        for option in self.options:
            value = options.get(option.name)
            if value is not None and not option.accepts(value):
                raise GrowError(f"{spell(option.name)} of {self.name} must be {option.what}, got {value!r}")


CATALOG: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("stackbert", "StackBERT: repeat the whole layer stack; Net2Net copies for width", "net2net", "stack"),
    MethodInfo("interpolate", "interpolation: repeat each layer in place; Net2Net copies for width", "net2net", "interpolate"),
    MethodInfo("net2net", "Net2Net: random unit copies with split outgoing weights; identity layers for depth",
               "net2net", "identity"),
    MethodInfo("bert2bert", "bert2BERT AKI: new units take the next layer's weights; stacked depth", "aki", "stack"),
    MethodInfo("exact", "function-preserving: tiled width with cancelling noise (whole growth factors) or "
               "zero-extended width (other factors, RMSNorm models only); identity layers for depth",
               "tile", "identity", uneven_width="zero"),
    MethodInfo("ligo", "LiGO: learned width and depth maps, fit on the target's loss (init: stackbert_noisy or a "
               "fixed method)", options=(INIT, NOISE)),
    MethodInfo("mango", "Mango: learned tensor-ring (multi-linear) growth operator of rank R; by default its "
               "function-preserving start (Net2Net width, new units silent reading mixed inputs, identity layers), "
               "fit with --steps N",
               options=(RANK, INIT, NOISE, SPLIT, MIX), fit_steps=0, fit_lr=1e-4),
)}
#: every option some method takes, in the order the command line checks them
OPTION_NAMES = tuple(dict.fromkeys(option.name for method in CATALOG.values() for option in method.options))


def method_name(name: str, known: tuple[str, ...] | None = None) -> str:
    """The method ``name`` means, matched without regard to case; otherwise a refusal that suggests the closest."""
    known = tuple(CATALOG) if known is None else known
    if not isinstance(name, str):
        raise GrowError(f"method must be a name such as 'exact', got {name!r}")
    if name in known:
        return name
    by_case = {k.lower(): k for k in known}
    if name.strip().lower() in by_case:
        return by_case[name.strip().lower()]
    close = difflib.get_close_matches(name.strip().lower(), list(by_case), n=1, cutoff=0.6)
    hint = f"did you mean {by_case[close[0]]!r}? " if close else ""
    raise GrowError(f"unknown method {name!r}; {hint}choose one of {', '.join(known)} (see `growkit methods`)")


def refuse_unused(method: str, given: list[str], accepted: list[str], spell=lambda option: f"{option}=") -> None:
    """Refuse options that ``method`` would ignore, naming them as the user wrote them (``spell``).

    One message for the API (``rank=``) and the command line (``--rank``), so an
    option a method does not use is never silently dropped.
    """
    unused = [option for option in given if option not in accepted]
    if not unused:
        return
    info = CATALOG.get(method)
    kind = f" ({info.kind()})" if info else ""
    takes = ", ".join(spell(option) for option in accepted) or "no options"
    names = ", ".join(spell(option) for option in unused)
    verb = "does" if len(unused) == 1 else "do"
    raise GrowError(f"{names} {verb} not apply to {method}{kind}; {method} takes {takes}")
