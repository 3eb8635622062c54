"""Summarise a benchmark: per-method savings across seeds, results.json and report.md."""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean

from ..arch import IMAGE, family_adapter
from ..core.catalog import CATALOG
from ..settings import FitConfig
from .runner import BenchResult
from .savings import CURVE_FRACTIONS, Comparison, Curve, back_to, compare, convergence, reach, savings_curve

CONVERGED = 0.02  #: scratch should improve by less than this over the last fifth of its budget
MARGIN = 0.02  #: scratch's final loss should be at least this much (relative) below the small model's
PLOTS = ("loss_vs_flops.png", "loss_vs_seconds.png", "savings_curve.png")
#: the fixed baselines a method is paired with (per seed, the best of those that ran)
FIXED = ("stackbert", "interpolate", "net2net", "bert2bert", "exact")
BUSY_MARK = "*"  #: marks wall-time cells of runs whose machine was busier than its cores


def _stats(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None and math.isfinite(v)]
    if not got:
        return {"mean": None, "min": None, "max": None, "n": 0, "of": len(values)}
    return {"mean": mean(got), "min": min(got), "max": max(got), "n": len(got), "of": len(values)}


def best_fixed(comparisons: dict[str, Comparison]) -> tuple[str, float] | None:
    """The fixed baseline with the highest FLOP savings among those that ran and reached the target."""
    reached = [(c.flop_savings, m) for m, c in comparisons.items() if m in FIXED and c.flop_savings is not None]
    if not reached:
        return None
    value, method = max(reached)
    return method, value


def paired(per_seed: dict[int, dict[str, Comparison]], methods: list[str]) -> tuple[dict, dict]:
    """Each method's FLOP savings minus its seed's best fixed baseline: statistics over seeds, and the baselines.

    Seed noise moves every method of a seed together (same source, data order and
    target loss), so a paired difference separates methods that unpaired means cannot.
    """
    best = {seed: best_fixed(comps) for seed, comps in per_seed.items()}
    table = {}
    for m in methods:
        if m == "scratch":
            continue
        diffs = {seed: (None if best[seed] is None or comps[m].flop_savings is None
                        else comps[m].flop_savings - best[seed][1]) for seed, comps in per_seed.items()}
        table[m] = {**_stats(list(diffs.values())), "ahead": sum(1 for d in diffs.values() if d is not None and d > 0),
                    "per_seed": diffs}
    baselines = {seed: None if b is None else {"method": b[0], "flop_savings": b[1]} for seed, b in best.items()}
    return table, baselines


def curve_table(result: BenchResult) -> dict:
    """{method: {fraction: stats}}: FLOP savings at the losses scratch reaches at 25/50/75/100% of its budget."""
    per_seed = {}
    for seed, runs in result.runs.items():
        scratch = Curve.from_history(runs["scratch"]["history"])
        per_seed[seed] = {m: savings_curve(Curve.from_history(r["history"]), scratch) for m, r in runs.items()}
    return {m: {f: _stats([per_seed[s][m][f] for s in per_seed]) for f in CURVE_FRACTIONS}
            for m in result.info["methods"]}


def source_worth(result: BenchResult) -> dict[int, float | None]:
    """{seed: share of scratch's FLOPs spent reaching the small model's eval loss}.

    The savings of a start that sits exactly at the source's loss and then learns at scratch's
    pace: a yardstick for what growth can carry over at this budget (a grown model that trains
    faster than scratch can beat it). None where scratch never reached the source's loss.
    """
    out = {}
    for seed, runs in result.runs.items():
        scratch = Curve.from_history(runs["scratch"]["history"])
        at_source = reach(scratch, result.sources[seed]["eval_loss"]).flops
        at_end = reach(scratch, scratch.final_loss).flops
        out[seed] = at_source / at_end if at_source is not None and at_end else None
    return out


def busy_runs(result: BenchResult) -> dict[int, dict[str, dict]]:
    """{seed: {method: load}} of the runs whose load average exceeded the cores (older runs have no record)."""
    out: dict[int, dict[str, dict]] = {}
    for seed, runs in result.runs.items():
        for m, r in runs.items():
            load = r.get("load") or {}
            if load.get("busy"):
                out.setdefault(seed, {})[m] = load
    return out


def summarise(result: BenchResult) -> dict:
    """Everything results.json holds: settings, per-seed comparisons, per-method statistics."""
    spec, p = result.spec, result.spec.preset
    curves = {s: {m: Curve.from_history(r["history"]) for m, r in runs.items()} for s, runs in result.runs.items()}
    per_seed: dict[int, dict[str, Comparison]] = {}
    scratch_conv = {}
    for seed, runs in curves.items():
        scratch_conv[seed] = convergence(runs["scratch"])
        per_seed[seed] = {m: compare(m, curve, runs["scratch"]) for m, curve in runs.items()}
    methods = result.info["methods"]
    busy = busy_runs(result)
    pairs, baselines = paired(per_seed, methods)
    table = {}
    for m in methods:
        rows = [per_seed[s][m] for s in per_seed]
        recs = [result.runs[s][m] for s in per_seed]
        back = [back_to(curves[s][m], result.sources[s]["eval_loss"]) for s in per_seed]
        table[m] = {
            "final_loss": _stats([c.final_loss for c in rows]),
            "steps_to_target": _stats([c.reach.step for c in rows]),
            "flops_to_target": _stats([c.reach.flops for c in rows]),
            "seconds_to_target": _stats([c.reach.seconds for c in rows]),
            "flop_savings": _stats([c.flop_savings for c in rows]),
            "wall_savings": _stats([c.wall_savings for c in rows]),
            "fit_flops": _stats([r["fit_flops"] for r in recs]),
            "fit_seconds": _stats([r["grow_seconds"] for r in recs]),
            "initial_loss": _stats([curves[s][m].loss[0] for s in per_seed]),
            "steps_to_source_loss": _stats([step for step, _ in back]),
            "highest_loss_before": _stats([highest for _, highest in back]),
            # wall figures compare with scratch's seconds, so a busy scratch run spoils every method's
            "wall_unreliable": any(m in busy.get(s, {}) or "scratch" in busy.get(s, {}) for s in per_seed),
        }
    sources = {s: {k: v for k, v in r.items() if k != "history"} for s, r in result.sources.items()}
    checks = [r["train_flops_check"] for s in result.runs for r in [result.runs[s]["scratch"]] if r.get("train_flops_check")]
    return {
        "info": result.info,
        "preset": p.to_dict(),
        "data": spec.data,
        "target_loss": {s: per_seed[s]["scratch"].final_loss for s in per_seed},
        "scratch_last_fifth_improvement": scratch_conv,
        "scratch_converged": all(v < CONVERGED for v in scratch_conv.values()),
        "margin_below_source": {s: (result.sources[s]["eval_loss"] - per_seed[s]["scratch"].final_loss)
                                / result.sources[s]["eval_loss"] for s in per_seed},
        "sources": sources,
        "source_worth": source_worth(result),
        "flops_check": checks[0] if checks else None,
        "methods": table,
        "paired": pairs,
        "best_fixed": baselines,
        "savings_curve": curve_table(result),
        "busy_runs": busy,
        "load": {s: {m: r.get("load") for m, r in runs.items()} for s, runs in result.runs.items()},
        "per_seed": {s: {m: c.to_dict() for m, c in comps.items()} for s, comps in per_seed.items()},
        "curves": {s: {m: curve.__dict__ for m, curve in runs.items()} for s, runs in curves.items()},
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
        mark = BUSY_MARK if t.get("wall_unreliable") else ""
        rows.append([
            m,
            _cell(t["initial_loss"], ".3f", spread=False),
            _cell(t["final_loss"], ".4f"),
            _cell(t["steps_to_target"], ".0f", spread=False),
            _cell(t["flops_to_target"], ".3g", spread=False),
            _cell(t["seconds_to_target"], ".1f", spread=False) + mark,
            "—" if m == "scratch" else _cell(t["flop_savings"], ".1f", pct=True),
            ("—" if m == "scratch" else _cell(t["wall_savings"], ".1f", pct=True)) + mark,
            "—" if not t["fit_flops"]["mean"] else _num(t["fit_flops"]["mean"], ".3g"),
            "—" if m == "scratch" else _num(t["fit_seconds"]["mean"], ".1f"),
        ])
    return rows


HEADER = ["method", "loss at start", "final eval loss (equal budget)", "steps to target", "FLOPs to target", "s to target",
          "FLOP savings", "wall savings", "fit FLOPs", "fit/grow s"]


def markdown_table(summary: dict) -> str:
    return _markdown(HEADER, table_rows(summary))


def text_table(summary: dict) -> str:
    """The table for a terminal (and the busy-machine note under it)."""
    head = ["method", "start", "final loss", "steps", "FLOPs", "s", "FLOP sav.", "wall sav.", "fit FLOPs", "fit s"]
    note = busy_note(summary)
    return _text(head, table_rows(summary)) + (f"\n{note}" if note else "")


def busy_note(summary: dict) -> str | None:
    """What the wall-time mark means, with how many runs were busy and how busy; None when none was."""
    busy = [load for by_method in (summary.get("busy_runs") or {}).values() for load in by_method.values()]
    if not busy:
        return None
    total = sum(len(runs) for runs in summary["load"].values())
    return (f"{BUSY_MARK} wall times unreliable: the load average exceeded the number of cores during {len(busy)} of "
            f"{total} runs (up to {max(b['max'] for b in busy):.1f} on {busy[0]['cores']} cores), so their seconds "
            "measure the machine's load as much as the method; FLOPs are unaffected")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.1f}"


def paired_rows(summary: dict) -> list[list[str]]:
    """method, mean, min, max of the paired difference (points), and seeds ahead of the best fixed baseline."""
    rows = []
    for m, st in summary["paired"].items():
        if st["n"] == 0:
            rows.append([m, "—", "—", "—", f"0/{st['of']}"])
            continue
        rows.append([m, _pct(st["mean"]), _pct(st["min"]), _pct(st["max"]), f"{st['ahead']}/{st['of']}"])
    return rows


PAIRED_HEADER = ["method", "mean (points)", "min", "max", "seeds ahead"]


def back_rows(summary: dict) -> list[list[str]]:
    """method, loss at start, highest eval loss until back at the small model's, steps to get there."""
    return [[m, _cell(t["initial_loss"], ".3f", spread=False),
             "—" if m == "scratch" else _cell(t["highest_loss_before"], ".3f"),
             _cell(t["steps_to_source_loss"], ".0f")] for m, t in summary["methods"].items()]


def baselines_line(summary: dict) -> str:
    best = summary["best_fixed"]
    return "Best fixed baseline per seed: " + ", ".join(
        f"seed {s}: " + ("none reached the target" if b is None else f"{b['method']} {b['flop_savings'] * 100:.1f}%")
        for s, b in best.items()) + "."


def curve_rows(summary: dict) -> list[list[str]]:
    return [[m] + [_cell(curve[f], ".1f", pct=True) for f in curve]
            for m, curve in summary["savings_curve"].items() if m != "scratch"]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _text(header: list[str], rows: list[list[str]]) -> str:
    rows = [header] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def text_paired(summary: dict) -> str:
    """The paired table for a terminal (empty when no fixed baseline ran)."""
    if not summary["paired"] or all(b is None for b in summary["best_fixed"].values()):
        return ""
    return ("FLOP savings minus the seed's best fixed baseline (percentage points):\n"
            + _text(PAIRED_HEADER, paired_rows(summary)))


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


def _fit_defaults(steps: int, lr: float | None) -> str:
    """How each learned method fits by default in this preset: its own lr unless the preset sets one."""
    return "; ".join(f"{m.name}: up to {steps} steps at lr {lr or m.fit_lr:g}" if m.fit_steps else
                     f"{m.name}: no fit, its start" for m in CATALOG.values() if m.learned)


def _own_schedules(p: dict) -> str:
    """Where scratch or the grown targets train with their own peak lr or warm-up (the preset's or the overrides')."""
    own = []
    for who, key in (("scratch", "scratch_train"), ("every grown target", "grown_train")):
        train = p.get(key) or {}
        parts = [f"peak lr {train['train_lr']:g}" if "train_lr" in train else "",
                 f"warmup {train['train_warmup']}" if "train_warmup" in train else "",
                 f"the lr decay ending at {train['train_decay_fraction']:.0%} of the steps"
                 if "train_decay_fraction" in train else ""]
        if any(parts):
            own.append(f"{who} trains with {', '.join(x for x in parts if x)} instead")
    return "".join(f"; {line}" for line in own)


def report_markdown(summary: dict) -> str:
    info, p = summary["info"], summary["preset"]
    b, sb = p["budget"], p["source_budget"]
    seeds = info["seeds"]
    lines = [f"# growkit bench: {info['family']}, preset {info['preset']}", ""]
    data = info["data"]
    if family_adapter(info["family"]).objective == IMAGE:
        shape = f"images {p['image_size']}x{p['image_size']}, patch {p['patch_size']}, batch {p['batch_size']}"
    else:
        shape = f"{info['data_info'].get('tokens', '?')} tokens, BPE vocab {info['vocab_size']}, seq {p['seq_len']}, batch {p['batch_size']}"
    lines += [
        f"- source {info['source']} ({info['source_params']:,} parameters) -> target {info['target']} "
        f"({info['target_params']:,} parameters); methods: {', '.join(info['methods'])}; seeds: {', '.join(map(str, seeds))}",
        f"- data: {data} ({shape}); eval on the same {p['eval_batches']} held-out batches for every run",
        f"- every target trains {b['steps']} steps: AdamW lr {b['lr']:g}, warmup {b['warmup']}, {b['schedule']} decay "
        f"to {b['min_lr_ratio']:g}x, eval every {b['eval_every']} steps; same data order within a seed"
        + _own_schedules(p),
        f"- learned operators fit on the same data ({_fit_defaults(p['fit_steps'], p['fit_lr'])}; a variant may set "
        "fit_steps and fit_lr), keeping the best "
        f"operator on held-out batches of the training data (checked at step 0 and after steps "
        f"{', '.join(map(str, FitConfig(steps=p['fit_steps']).check_steps()))}; "
        f"stopped after {FitConfig.patience} checks without a new best; variants may change this with fit_patience); their measured FLOPs, checks included, "
        "and the wall time of the whole grow call start their curves (included in the savings)",
    ]
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
    worth = summary.get("source_worth") or {}
    if any(v is not None for v in worth.values()):
        lines += ["The source's worth: scratch spends " + ", ".join(f"{_num(v, '.1%')} (seed {s})" for s, v in worth.items())
                  + " of its FLOPs to reach the small model's eval loss. A start at exactly that loss that then "
                  "learned at scratch's pace, with no fit, would save as much; savings above it mean the grown "
                  "model also trains faster than scratch.", ""]
    note = busy_note(summary)
    if note:
        lines += [f"**\\{note}.**", ""]
    lines += ["## Back at the small model's loss", "",
              "A trained model's eval loss first rises when training starts again at the peak learning rate (the "
              "schedule warms up anew), so a start at the small model's loss spends its first steps climbing back "
              "there: those steps are head start lost. Steps after step 0 until each run's eval loss is back at "
              "the small model's (interpolated between evaluations; for scratch, the steps behind the source's "
              "worth), and the highest eval loss on the way.", "",
              _markdown(["method", "loss at start", "highest eval loss after step 0, until back",
                         "steps to the small model's loss"], back_rows(summary)), ""]
    lines += ["## Paired with the best fixed baseline", ""]
    if all(b is None for b in summary["best_fixed"].values()):
        lines += ["No fixed baseline (" + ", ".join(FIXED) + ") ran and reached the target, so there is nothing to "
                  "pair with.", ""]
    else:
        lines += ["Each method's FLOP savings minus the same seed's best fixed baseline (" + ", ".join(FIXED)
                  + ", whichever ran), in percentage points. A seed's noise (its source, data order and target "
                  "loss) moves every method of that seed together, so the paired difference separates methods "
                  "that the means above cannot. " + baselines_line(summary), "",
                  _markdown(PAIRED_HEADER, paired_rows(summary)), ""]
    lines += ["## Savings curve", "",
              "FLOP savings to reach the eval loss scratch reaches at 25%, 50%, 75% and 100% of its budget "
              "(interpolated between evaluations; the operator's fit included). Rising along the row: the lead "
              "grows; falling: the head start fades.", "",
              _markdown(["method"] + [f"{f:.0%} of scratch's budget" for f in CURVE_FRACTIONS], curve_rows(summary)),
              "", "![savings curve](savings_curve.png)", ""]
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
    """Write results.json, report.md and the plots (:data:`PLOTS`) into the benchmark folder; returns the summary."""
    summary = summarise(result)
    fits = {}
    for m in result.info["methods"]:
        per = [result.runs[s][m]["fit"]["flops_per_step"] for s in result.runs
               if (result.runs[s][m].get("fit") or {}).get("flops_per_step") is not None]
        if per:
            fits[m] = mean(per)
    summary["fit_per_step"] = fits
    out = Path(result.out)
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "report.md").write_text(report_markdown(summary))
    if plots:
        from .plots import plot_curves, plot_savings_curve

        for axis, name in (("flops", PLOTS[0]), ("seconds", PLOTS[1])):
            plot_curves(summary, axis, out / name)
        plot_savings_curve(summary, out / PLOTS[2])
    return summary
