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
    n = len(seeds)
    spread = f"mean of {n} seeds, shaded min–max" if n > 1 else "1 seed"
    ax.set_title(f"{info['family']} {info['source']} → {info['target']} ({info['preset']} preset, {spread})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
