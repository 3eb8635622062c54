"""The savings benchmark: grow a pretrained small model with every method, train every target the
same way, and measure the compute each needs to reach scratch's final loss.

- :mod:`.presets`: sizes, data shapes and budgets per family and scale (smoke, tiny, tiny-long, small)
- :mod:`.runner`: pretrain/reuse the source, grow, fit, train; resumable run folders; worker processes
- :mod:`.load`: the load average while a run works, to flag wall times from a busy machine
- :mod:`.savings`: reaching a loss on a curve, savings, the savings curve, the convergence check
- :mod:`.report`: results.json, report.md and the tables (savings, paired differences, savings curve)
- :mod:`.plots`: loss vs FLOPs, loss vs seconds, and the savings curve
"""
from .presets import PRESETS, Budget, Preset, Size, get_preset
from .runner import DEFAULT_METHODS, BenchResult, BenchSpec, run_bench
from .savings import Curve, compare, convergence, first_reach, savings

__all__ = [
    "BenchResult", "BenchSpec", "Budget", "Curve", "DEFAULT_METHODS", "PRESETS", "Preset", "Size",
    "compare", "convergence", "first_reach", "get_preset", "run_bench", "savings",
]
