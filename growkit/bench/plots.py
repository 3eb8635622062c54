"""Loss curves of a benchmark: one curve per method, mean across seeds with a shaded min–max band."""
from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"flops": "training FLOPs (operator fit included)", "seconds": "training seconds (operator fit included)",
          "step": "training step"}


def seed_band(curves: list[dict], axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x grid, mean, min and max eval loss of several seeds' curves, on the x range they share.

    Each seed's loss is interpolated linearly onto the union of their x values;
    with one seed this is that seed's curve.
    """
    xs = [np.asarray(c[axis], dtype=float) for c in curves]
    ys = [np.asarray(c["loss"], dtype=float) for c in curves]
    if len(curves) == 1:
        return xs[0], ys[0], ys[0], ys[0]
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x in xs]))
    stack = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])
    return grid, stack.mean(0), stack.min(0), stack.max(0)


#: fixed colours so a method looks the same in every plot; the learned methods and scratch stand out
COLOURS = {"scratch": "black", "stackbert": "tab:orange", "interpolate": "tab:green", "net2net": "tab:purple",
           "bert2bert": "tab:brown", "exact": "tab:olive", "ligo": "tab:blue", "mango": "tab:red"}
BOLD = ("scratch", "ligo", "mango")


def plot_curves(summary: dict, axis: str, path: str | Path, log_x: bool = False) -> Path:
    """Eval loss against ``axis`` ('flops' or 'seconds') for every method, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = summary["info"]
    curves = summary["curves"]
    seeds = list(curves)
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    others = iter(plt.get_cmap("Set2").colors)
    lows, tops, scratch_top = [], [], None
    for method in info["methods"]:
        per_seed = [curves[s][method] for s in seeds if method in curves[s]]
        x, m, lo, hi = seed_band(per_seed, axis)
        keep = x > 0 if log_x else np.ones_like(x, dtype=bool)
        x, m, lo, hi = x[keep], m[keep], lo[keep], hi[keep]
        if not len(x):
            continue
        colour = COLOURS.get(method) or next(others)
        ax.plot(x, m, label=method, color=colour, lw=2.2 if method in BOLD else 1.3, ls="--" if "+" in method else "-",
                marker="." if len(x) < 40 else None)
        if len(per_seed) > 1:
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
        lows.append(lo.min())
        if method == "scratch":
            scratch_top = float(np.interp(x[0] + (x[-1] - x[0]) * 0.05, x, hi))
        tops.append(float(hi[0]))
    targets = list(summary["target_loss"].values())
    target = float(np.mean(targets))
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"scratch final loss ({target:.3f})")
    if lows and tops:  # from the best loss up to scratch at 5% of its budget (a worse grown start is clipped)
        bottom, top = min(lows), max(tops) if scratch_top is None else min(max(tops), scratch_top)
        if bottom > 0 and top / bottom > 5:  # e.g. classification losses near zero: log scale
            ax.set_yscale("log")
            ax.set_ylim(bottom / 1.1, top * 1.1)
        else:
            pad = 0.04 * (top - bottom)
            ax.set_ylim(bottom - pad, top + pad)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(LABELS.get(axis, axis) + (" (log)" if log_x else ""))
    ax.set_ylabel("eval loss")
    if axis == "seconds" and summary.get("busy_runs"):
        runs = sum(len(by) for by in summary["busy_runs"].values())
        ax.text(0.01, 0.01, f"UNRELIABLE: the load average exceeded the core count during {runs} run(s)",
                transform=ax.transAxes, color="tab:red", fontsize=9, va="bottom")
    return _finish(fig, ax, summary, path)


def _finish(fig, ax, summary: dict, path: str | Path) -> Path:
    """Title (sizes, preset, seeds), grid and legend; saved to ``path``."""
    import matplotlib.pyplot as plt

    info, n = summary["info"], len(summary["curves"])
    spread = f"mean of {n} seeds, shaded min–max" if n > 1 else "1 seed"
    ax.set_title(f"{info['family']} {info['source']} → {info['target']} ({info['preset']} preset, {spread})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_savings_curve(summary: dict, path: str | Path) -> Path:
    """FLOP savings against the fraction of scratch's budget whose loss is the target; one line per method.

    A point is drawn where at least one seed reached that loss (the mean over those
    that did); the band is the seeds' min–max.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    others = iter(plt.get_cmap("Set2").colors)
    for method, curve in summary["savings_curve"].items():
        if method == "scratch":
            continue
        points = [(float(f), st) for f, st in curve.items() if st["n"]]
        if not points:
            continue
        x = np.array([f for f, _ in points]) * 100
        mean, lo, hi = (np.array([st[k] for _, st in points]) * 100 for k in ("mean", "min", "max"))
        colour = COLOURS.get(method) or next(others)
        ax.plot(x, mean, label=method, color=colour, lw=2.2 if method in BOLD else 1.3,
                ls="--" if "+" in method else "-", marker="o")
        if len(summary["curves"]) > 1:
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("target loss: scratch's eval loss at this % of its budget")
    ax.set_ylabel("FLOP savings over scratch (%, operator fit included)")
    ax.set_xticks([f * 100 for f in sorted({float(f) for c in summary["savings_curve"].values() for f in c})])
    return _finish(fig, ax, summary, path)
