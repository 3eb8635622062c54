"""Summarise a benchmark: per-method savings across seeds, results.json and report.md."""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean

from .runner import BenchResult
from .savings import Comparison, Curve, compare, convergence

CONVERGED = 0.02  #: scratch should improve by less than this over the last fifth of its budget
MARGIN = 0.02  #: scratch's final loss should be at least this much (relative) below the small model's
PLOTS = ("loss_vs_flops.png", "loss_vs_seconds.png")


def _stats(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None and math.isfinite(v)]
    if not got:
        return {"mean": None, "min": None, "max": None, "n": 0, "of": len(values)}
    return {"mean": mean(got), "min": min(got), "max": max(got), "n": len(got), "of": len(values)}


def summarise(result: BenchResult) -> dict:
    """Everything results.json holds: settings, per-seed comparisons, per-method statistics."""
    spec, p = result.spec, result.spec.preset
    per_seed: dict[int, dict[str, Comparison]] = {}
    scratch_conv = {}
    for seed, runs in result.runs.items():
        scratch = Curve.from_history(runs["scratch"]["history"])
        scratch_conv[seed] = convergence(scratch)
        per_seed[seed] = {m: compare(m, Curve.from_history(r["history"]), scratch) for m, r in runs.items()}
    methods = result.info["methods"]
    table = {}
    for m in methods:
        rows = [per_seed[s][m] for s in per_seed]
        recs = [result.runs[s][m] for s in per_seed]
        table[m] = {
            "final_loss": _stats([c.final_loss for c in rows]),
            "steps_to_target": _stats([c.reach.step for c in rows]),
            "flops_to_target": _stats([c.reach.flops for c in rows]),
            "seconds_to_target": _stats([c.reach.seconds for c in rows]),
            "flop_savings": _stats([c.flop_savings for c in rows]),
            "wall_savings": _stats([c.wall_savings for c in rows]),
            "fit_flops": _stats([r["fit_flops"] for r in recs]),
            "fit_seconds": _stats([r["grow_seconds"] for r in recs]),
            "initial_loss": _stats([Curve.from_history(r["history"]).loss[0] for r in recs]),
        }
    sources = {s: {k: v for k, v in r.items() if k != "history"} for s, r in result.sources.items()}
    checks = [r["train_flops_check"] for s in result.runs for r in [result.runs[s]["scratch"]] if r.get("train_flops_check")]
    return {
        "info": result.info,
        "preset": p.to_dict(),
        "data": spec.data,
        "skipped": result.skipped,
        "target_loss": {s: per_seed[s]["scratch"].final_loss for s in per_seed},
        "scratch_last_fifth_improvement": scratch_conv,
        "scratch_converged": all(v < CONVERGED for v in scratch_conv.values()),
        "margin_below_source": {s: (result.sources[s]["eval_loss"] - per_seed[s]["scratch"].final_loss)
                                / result.sources[s]["eval_loss"] for s in per_seed},
        "sources": sources,
        "flops_check": checks[0] if checks else None,
        "methods": table,
        "per_seed": {s: {m: c.to_dict() for m, c in comps.items()} for s, comps in per_seed.items()},
        "curves": {s: {m: Curve.from_history(r["history"]).__dict__ for m, r in runs.items()}
                   for s, runs in result.runs.items()},
    }


# --- formatting -----------------------------------------------------------------
def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _cell(st: dict, fmt: str, *, pct: bool = False, spread: bool = True) -> str:
    """mean, with (min–max) when several seeds, and 'not reached' / 'k/n reached'."""
    if st["n"] == 0:
        return "not reached"
    scale = 100.0 if pct else 1.0
    text = format(st["mean"] * scale, fmt) + ("%" if pct else "")
    if spread and st["of"] > 1:
        text += f" ({format(st['min'] * scale, fmt)}–{format(st['max'] * scale, fmt)})"
    if st["n"] < st["of"]:
        text += f", reached {st['n']}/{st['of']}"
    return text


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    for m, t in summary["methods"].items():
        rows.append([
            m,
            _cell(t["initial_loss"], ".3f", spread=False),
            _cell(t["final_loss"], ".4f"),
            _cell(t["steps_to_target"], ".0f", spread=False),
            _cell(t["flops_to_target"], ".3g", spread=False),
            _cell(t["seconds_to_target"], ".1f", spread=False),
            "—" if m == "scratch" else _cell(t["flop_savings"], ".1f", pct=True),
            "—" if m == "scratch" else _cell(t["wall_savings"], ".1f", pct=True),
            "—" if not t["fit_flops"]["mean"] else _num(t["fit_flops"]["mean"], ".3g"),
            "—" if m == "scratch" else _num(t["fit_seconds"]["mean"], ".1f"),
        ])
    return rows


HEADER = ["method", "loss at start", "final eval loss (equal budget)", "steps to target", "FLOPs to target", "s to target",
          "FLOP savings", "wall savings", "fit FLOPs", "fit/grow s"]


def markdown_table(summary: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(summary)]
    return "\n".join(lines)


def text_table(summary: dict) -> str:
    """The table for a terminal."""
    head = ["method", "start", "final loss", "steps", "FLOPs", "s", "FLOP sav.", "wall sav.", "fit FLOPs", "fit s"]
    rows = [head] + table_rows(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def warnings(summary: dict) -> list[str]:
    """Plain warnings about what the savings can mean: scratch not converged, or not beyond the small model."""
    out = []
    conv = summary["scratch_last_fifth_improvement"]
    if not summary["scratch_converged"]:
        out.append(f"scratch is not near-converged: its eval loss improved by "
                   + ", ".join(f"{v * 100:.1f}%" for v in conv.values())
                   + f" over the last fifth of the budget (> {CONVERGED * 100:.0f}%), so the savings partly measure "
                   "the grown models' head start; use a longer budget for a fair figure")
    margin = summary.get("margin_below_source", {})
    low = {s: m for s, m in margin.items() if m < MARGIN}
    if low:
        worst = min(low.values())
        what = ("is not below" if worst <= 0 else f"is only {worst * 100:.1f}% below")
        out.append(f"scratch's final eval loss {what} the small model's ({', '.join(f'seed {s}: {m * 100:+.1f}%' for s, m in low.items())}): "
                   "a function-preserving start is already at or near the target, so the savings measure how fast "
                   "the grown models recover from the start of training and the fit's cost more than the operators; "
                   "a longer budget (--steps) lets the target pull away from the small model")
    return out


def report_markdown(summary: dict) -> str:
    info, p = summary["info"], summary["preset"]
    b, sb = p["budget"], p["source_budget"]
    seeds = info["seeds"]
    lines = [f"# growkit bench: {info['family']}, preset {info['preset']}", ""]
    data = info["data"]
    if info["family"] == "vit":
        shape = f"images {p['image_size']}x{p['image_size']}, patch {p['patch_size']}, batch {p['batch_size']}"
    else:
        shape = f"{info['data_info'].get('tokens', '?')} tokens, BPE vocab {info['vocab_size']}, seq {p['seq_len']}, batch {p['batch_size']}"
    lines += [
        f"- source {info['source']} ({info['source_params']:,} parameters) -> target {info['target']} "
        f"({info['target_params']:,} parameters); methods: {', '.join(info['methods'])}; seeds: {', '.join(map(str, seeds))}",
        f"- data: {data} ({shape}); eval on the same {p['eval_batches']} held-out batches for every run",
        f"- every target trains {b['steps']} steps: AdamW lr {b['lr']:g}, warmup {b['warmup']}, {b['schedule']} decay "
        f"to {b['min_lr_ratio']:g}x, eval every {b['eval_every']} steps; same data order within a seed",
        f"- learned operators fit {p['fit_steps']} steps at lr {p['fit_lr']:g} on the same data; their measured FLOPs "
        "and the wall time of the whole grow call start their curves (included in the savings)",
    ]
    for m, note in summary["skipped"].items():
        lines.append(f"- {note}")
    lines += ["", "## Savings to reach scratch's final eval loss", ""]
    targets = summary["target_loss"]
    lines.append("Target loss (scratch's final eval loss): "
                 + ", ".join(f"seed {s}: {v:.4f}" for s, v in targets.items()) + ".")
    if len(seeds) > 1:
        lines.append("Cells with several seeds show the mean and (min–max) across seeds; steps, FLOPs and seconds "
                     "to target are means over the seeds that reached it.")
    lines += ["", markdown_table(summary), ""]
    lines += ["Savings = 1 − C_method / C_scratch, where C is the compute (FLOPs, or training seconds) to first "
              "reach the target loss, interpolated linearly between evaluations; C_method includes the "
              "operator's fit. Wall time counts training steps only (not evaluation) on a shared machine, so "
              "it is noisier than FLOPs.", ""]
    lines += ["## Scratch convergence check", ""]
    conv = summary["scratch_last_fifth_improvement"]
    lines.append("Scratch's eval loss improved by " + ", ".join(f"{v * 100:.2f}% (seed {s})" for s, v in conv.items())
                 + f" over the last fifth of the budget (threshold {CONVERGED * 100:.0f}%).")
    margin = summary.get("margin_below_source", {})
    if margin:
        lines.append("Scratch's final eval loss is " + ", ".join(f"{m * 100:.1f}% (seed {s})" for s, m in margin.items())
                     + " below the small model's (same eval set). Under a decaying schedule the last fifth is flat "
                     "almost by construction, so read the convergence figure with this margin and the curves.")
    for w in warnings(summary):
        lines += ["", f"**Warning: {w}.**"]
    lines += ["", "## Small-model (source) pretraining, reported separately", ""]
    lines.append("| seed | size | eval loss | steps | FLOPs | seconds |")
    lines.append("|---|---|---|---|---|---|")
    for s, r in summary["sources"].items():
        lines.append(f"| {s} | {r['size']} | {r['eval_loss']:.4f} | {r['steps']} | {r['flops']:.3g} | {r['seconds']:.0f} |")
    lines.append(f"\nThe source pretrains {sb['steps']} steps at lr {sb['lr']:g}. Its cost is not in the savings above, "
                 "as in the papers (the small model is assumed to exist already).")
    check = summary["flops_check"]
    if check:
        ratio = check["measured"] / check["analytic"] if check["analytic"] else math.nan
        lines += ["", "## FLOP accounting check", "",
                  f"One target training step: analytic {check['analytic']:.4g} FLOPs, measured with "
                  f"torch FlopCounterMode {check['measured']:.4g} (ratio {ratio:.3f})."]
        fits = summary.get("fit_per_step") or {}
        for m, v in fits.items():
            lines.append(f"{m}: one fit step measures {v:.4g} FLOPs ({v / check['analytic']:.2f}x a training step).")
    lines += ["", "## Curves", "", "![loss vs FLOPs](loss_vs_flops.png)", "", "![loss vs seconds](loss_vs_seconds.png)", ""]
    return "\n".join(lines)


def write_report(result: BenchResult, plots: bool = True) -> dict:
    """Write results.json, report.md and the two plots into the benchmark folder; returns the summary."""
    summary = summarise(result)
    fits = {}
    for m in result.info["methods"]:
        per = [result.runs[s][m]["fit"]["flops_per_step"] for s in result.runs if result.runs[s][m].get("fit")]
        if per:
            fits[m] = mean(per)
    summary["fit_per_step"] = fits
    out = Path(result.out)
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "report.md").write_text(report_markdown(summary))
    if plots:
        from .plots import plot_curves

        for axis, name in (("flops", PLOTS[0]), ("seconds", PLOTS[1])):
            plot_curves(summary, axis, out / name)
    return summary
