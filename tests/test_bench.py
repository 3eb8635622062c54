"""The savings benchmark: savings arithmetic on synthetic curves, and the smoke preset end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from growkit.bench import BenchSpec, Curve, compare, convergence, first_reach, get_preset, run_bench, savings
from growkit.bench.plots import seed_band
from growkit.bench.report import (PLOTS, paired, report_markdown, source_worth, summarise, text_paired, text_table, warnings,
                                  write_report)
from growkit.bench.savings import back_to, savings_curve
from growkit.core.errors import GrowError
from growkit.settings import FitConfig


def curve(xs, losses, fit_flops=0.0, fit_seconds=0.0) -> Curve:
    """A curve as the training loop records it: x starts at the operator's fit cost."""
    return Curve(list(range(len(xs))), [fit_flops + x for x in xs], [fit_seconds + x / 10 for x in xs], list(losses))


# --- savings arithmetic ---------------------------------------------------------------
def test_first_reach_interpolates_linearly():
    xs, losses = [0, 10, 20, 30], [5.0, 3.0, 2.0, 1.5]
    assert first_reach(xs, losses, 1.5) == 30.0
    assert first_reach(xs, losses, 2.5) == pytest.approx(15.0)  # halfway between 3.0 (x=10) and 2.0 (x=20)
    assert first_reach(xs, losses, 2.2) == pytest.approx(18.0)
    assert first_reach(xs, losses, 6.0) == 0.0  # already below at the first evaluation
    assert first_reach(xs, losses, 1.0) is None
    assert first_reach([0, 10, 20], [5.0, math.nan, 1.0], 2.0) is None  # a diverged run ends its curve


def test_first_reach_takes_the_first_crossing():
    assert first_reach([0, 10, 20, 30], [4.0, 2.0, 3.0, 1.0], 2.5) == pytest.approx(7.5)


def test_savings_include_the_fit_cost():
    scratch = curve([0, 10, 20, 30], [5.0, 3.0, 2.0, 1.5])
    grown = curve([0, 10, 20, 30], [4.0, 2.0, 1.4, 1.2], fit_flops=4.0, fit_seconds=0.4)
    c = compare("grown", grown, scratch)
    # target 1.5: scratch pays 30; grown crosses 2.0 -> 1.4 at 5/6 of the way from x=14 to x=24
    assert c.reach.target == 1.5
    assert c.reach.flops == pytest.approx(14 + 10 * 5 / 6)
    assert c.flop_savings == pytest.approx(1 - (14 + 10 * 5 / 6) / 30)
    assert c.reach.seconds == pytest.approx(1.4 + 5 / 6)
    assert c.wall_savings == pytest.approx(1 - (1.4 + 5 / 6) / 3.0)
    assert c.reach.step == pytest.approx(1 + 5 / 6)  # steps count training only, not the fit
    assert c.final_loss == 1.2
    # without the fit cost the same curve would save more
    free = compare("free", curve([0, 10, 20, 30], [4.0, 2.0, 1.4, 1.2]), scratch)
    assert free.flop_savings - c.flop_savings == pytest.approx(4 / 30)


def test_a_fit_that_costs_more_than_it_saves_gives_negative_savings():
    scratch = curve([0, 10, 20], [5.0, 3.0, 2.0])
    grown = curve([0, 10, 20], [4.0, 2.0, 1.9], fit_flops=25.0)
    assert compare("g", grown, scratch).flop_savings == pytest.approx(1 - 35 / 20)


def test_not_reached():
    scratch = curve([0, 10, 20], [5.0, 3.0, 2.0])
    slow = curve([0, 10, 20], [5.0, 4.0, 2.5])
    c = compare("slow", slow, scratch)
    assert not c.reach.reached and c.reach.flops is None and c.reach.seconds is None
    assert c.flop_savings is None and c.wall_savings is None
    assert savings(None, 10.0) is None and savings(5.0, 10.0) == 0.5


def test_scratch_against_itself_saves_nothing():
    scratch = curve([0, 10, 20], [5.0, 3.0, 2.0])
    assert compare("scratch", scratch, scratch).flop_savings == 0.0


def test_convergence_is_the_improvement_over_the_last_fifth():
    c = Curve([0, 50, 100], [0, 1, 2], [0, 1, 2], [5.0, 3.0, 2.0])
    # at step 80 the loss is 3.0 + (2.0 - 3.0) * 30/50 = 2.4; the end is 2.0
    assert convergence(c) == pytest.approx((2.4 - 2.0) / 2.4)


def test_savings_curve_targets_scratchs_loss_at_each_fraction_of_its_budget():
    scratch = curve([0, 10, 20, 30, 40], [5.0, 4.0, 3.0, 2.5, 2.0])
    grown = curve([0, 10, 20, 30, 40], [3.5, 3.0, 2.2, 2.0, 1.9], fit_flops=2.0)
    got = savings_curve(grown, scratch)
    # 25% of the budget is step 1 of 4 (loss 4.0): scratch pays 10, grown is below it at its start (x = 2)
    assert got[0.25] == pytest.approx(1 - 2 / 10)
    # 50%: loss 3.0; scratch pays 20, grown reaches 3.0 at x = 2 + 10
    assert got[0.5] == pytest.approx(1 - 12 / 20)
    # 75%: loss 2.5; grown crosses 3.0 -> 2.2 at 5/8 of the way from x = 12 to 22
    assert got[0.75] == pytest.approx(1 - (12 + 10 * 5 / 8) / 30)
    assert got[1.0] == pytest.approx(compare("g", grown, scratch).flop_savings) == pytest.approx(1 - 32 / 40)
    # between evaluations scratch's loss is interpolated: 3/8 of the budget is step 1.5 (loss 3.5)
    assert savings_curve(grown, scratch, [0.375])[0.375] == pytest.approx(1 - 2 / 15)


def test_paired_differences_use_each_seeds_best_fixed_baseline():
    scratch = curve([0, 10, 20], [5.0, 3.0, 2.0])

    def run(loss_at_10: float) -> Curve:  # reaches 2.0 sooner the lower its loss at x = 10
        return curve([0, 10, 20], [4.0, loss_at_10, 1.5])

    per_seed = {
        0: {m: compare(m, c, scratch) for m, c in
            {"scratch": scratch, "exact": run(2.5), "bert2bert": run(2.2), "mango": run(2.1)}.items()},
        1: {m: compare(m, c, scratch) for m, c in
            {"scratch": scratch, "exact": run(2.1), "bert2bert": run(2.4), "mango": run(2.3)}.items()},
    }
    table, best = paired(per_seed, ["scratch", "exact", "bert2bert", "mango"])
    assert best[0]["method"] == "bert2bert" and best[1]["method"] == "exact"
    d0 = per_seed[0]["mango"].flop_savings - per_seed[0]["bert2bert"].flop_savings
    d1 = per_seed[1]["mango"].flop_savings - per_seed[1]["exact"].flop_savings
    assert d0 > 0 > d1
    mango = table["mango"]
    assert mango["per_seed"] == {0: pytest.approx(d0), 1: pytest.approx(d1)}
    assert mango["mean"] == pytest.approx((d0 + d1) / 2) and mango["min"] == pytest.approx(d1)
    assert mango["ahead"] == 1 and mango["of"] == 2
    assert table["exact"]["max"] == 0.0 and table["exact"]["ahead"] == 0
    assert "scratch" not in table
    # no fixed baseline ran: nothing to pair with
    alone, none = paired({0: {m: per_seed[0][m] for m in ("scratch", "mango")}}, ["scratch", "mango"])
    assert none == {0: None} and alone["mango"]["n"] == 0


def test_source_worth_is_scratch_share_of_flops_to_reach_the_small_models_loss():
    from types import SimpleNamespace

    history = [{"step": i * 10, "flops": i * 100.0, "seconds": float(i), "eval_loss": loss}
               for i, loss in enumerate([8.0, 6.0, 5.0, 4.5, 4.0])]
    result = SimpleNamespace(runs={0: {"scratch": {"history": history}}, 1: {"scratch": {"history": history}}},
                             sources={0: {"eval_loss": 5.5}, 1: {"eval_loss": 3.0}})
    worth = source_worth(result)
    assert worth[0] == pytest.approx(150.0 / 400.0)  # 5.5 lies halfway between the evals at 100 and 200 FLOPs
    assert worth[1] is None  # scratch never reached a source that good


def test_back_to_finds_where_a_run_climbs_back_to_the_small_models_loss():
    def curve(losses):
        return Curve([i * 10 for i in range(len(losses))], [i * 100.0 for i in range(len(losses))],
                     [float(i) for i in range(len(losses))], losses)

    step, highest = back_to(curve([4.7, 4.9, 4.8, 4.6, 4.5]), 4.7)  # the re-warm bump: up 0.2, back between 20 and 30
    assert step == pytest.approx(25.0) and highest == 4.9
    assert back_to(curve([4.7, 4.9, 4.8]), 4.7) == (None, 4.9)  # never back: the highest of the whole run
    assert back_to(curve([7.6, 5.0, 4.0]), 4.5) == (pytest.approx(15.0), 5.0)  # scratch: its steps to that loss
    assert back_to(curve([4.7, 4.6]), 4.7) == (10.0, 4.6)  # no bump: back at the first evaluation


def test_seed_band_interpolates_onto_a_shared_grid():
    a = {"seconds": [0.0, 10.0, 20.0], "loss": [4.0, 3.0, 2.0]}
    b = {"seconds": [1.0, 9.0, 21.0], "loss": [4.0, 2.0, 1.0]}
    x, mean, lo, hi = seed_band([a, b], "seconds")
    assert x[0] == 1.0 and x[-1] == 20.0
    i = list(x).index(10.0)
    b_at_10 = 2.0 + (1.0 - 2.0) * 1 / 12
    assert mean[i] == pytest.approx((3.0 + b_at_10) / 2) and lo[i] == pytest.approx(b_at_10) and hi[i] == 3.0
    assert np.all(lo <= mean) and np.all(mean <= hi)


# --- the smoke preset, end to end -----------------------------------------------------
METHODS = ["scratch", "exact", "ligo"]


def _spec(methods=METHODS, **kw) -> BenchSpec:
    return BenchSpec(get_preset("gpt2", "smoke"), methods=list(methods), seeds=[0], threads=1, **kw)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "gpt2-smoke"
    lines = []
    result = run_bench(_spec(), out, log=lines.append)
    summary = write_report(result)
    return out, result, summary, lines


def test_smoke_writes_report_results_and_plots(smoke):
    out, result, summary, _ = smoke
    for name in ("report.md", "results.json", *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "loss_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "results.json").read_text())
    assert list(data["methods"]) == METHODS
    report = (out / "report.md").read_text()
    for m in METHODS:
        assert f"| {m} |" in report
    assert "## Paired with the best fixed baseline" in report and "## Savings curve" in report
    assert data["best_fixed"]["0"]["method"] == "exact"  # the only fixed baseline that ran
    assert data["paired"]["ligo"]["per_seed"]["0"] == pytest.approx(
        data["methods"]["ligo"]["flop_savings"]["mean"] - data["methods"]["exact"]["flop_savings"]["mean"])
    assert set(data["savings_curve"]["ligo"]) == {"0.25", "0.5", "0.75", "1.0"}
    assert data["savings_curve"]["ligo"]["1.0"]["mean"] == pytest.approx(data["methods"]["ligo"]["flop_savings"]["mean"])
    assert all(r["load"]["cores"] >= 1 for r in result.runs[0].values())
    assert "Small-model (source) pretraining" in report and "convergence" in report
    assert sorted(result.trained) == [(0, m) for m in sorted(METHODS)]
    assert (out / "source-gpt2-smoke-seed0" / "DONE").is_file()
    assert "ligo" in text_table(summary)
    assert set(data["source_worth"]) == {"0"}
    assert "## Back at the small model's loss" in report
    assert data["methods"]["exact"]["steps_to_source_loss"]["of"] == 1


def test_smoke_curves_start_at_the_fit_cost(smoke):
    _, result, summary, _ = smoke
    ligo = result.runs[0]["ligo"]
    assert ligo["fit"]["steps"] == 3 and ligo["fit_flops"] > 0
    fit = ligo["fit"]
    assert [step for step, _ in fit["held_out"]] == [0, 3]  # the held-out check at the start and the end
    assert fit["flops_per_check"] > fit["flops_materialise"] > 0
    assert ligo["fit_flops"] == pytest.approx(3 * fit["flops_per_step"] + fit["flops_materialise"]
                                              + 2 * fit["flops_per_check"])
    assert ligo["history"][0]["flops"] == ligo["fit_flops"]  # the step-0 eval sits at the fit's cost
    assert ligo["history"][0]["seconds"] == ligo["grow_seconds"] > 0
    assert result.runs[0]["scratch"]["history"][0]["flops"] == 0.0
    assert result.runs[0]["exact"]["fit_flops"] == 0.0
    # every target trained the same steps on the same budget; scratch is its own target
    assert {len(r["history"]) for r in result.runs[0].values()} == {len(result.runs[0]["scratch"]["history"])}
    assert summary["methods"]["scratch"]["flop_savings"]["mean"] == 0.0
    check = summary["flops_check"]
    assert check["measured"] == pytest.approx(check["analytic"], rel=0.1)


def test_rerun_skips_finished_runs(smoke):
    out, first, _, _ = smoke
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed0/*/run.json")}
    lines = []
    again = run_bench(_spec(), out, log=lines.append)
    assert again.trained == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed0/*/run.json")} == stamps
    assert any("reusing" in line for line in lines)
    for m in METHODS:
        assert again.runs[0][m]["eval_loss"] == first.runs[0][m]["eval_loss"]


def test_an_interrupted_run_is_started_again(smoke, tmp_path):
    out, first, _, _ = smoke
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "seed0" / "exact" / "DONE").unlink()  # as if killed mid-training
    again = run_bench(_spec(), copy, log=lambda _: None)
    assert again.trained == [(0, "exact")]
    assert again.runs[0]["exact"]["eval_loss"] == first.runs[0]["exact"]["eval_loss"]


def test_same_seed_same_results(smoke, tmp_path):
    _, first, _, _ = smoke
    second = run_bench(_spec(["scratch", "ligo"]), tmp_path / "again", log=lambda _: None)
    for m in ("scratch", "ligo"):
        a, b = first.runs[0][m], second.runs[0][m]
        assert [r.get("eval_loss") for r in a["history"]] == [r.get("eval_loss") for r in b["history"]]
        assert a["fit_flops"] == b["fit_flops"]
    assert first.sources[0]["eval_loss"] == second.sources[0]["eval_loss"]


def test_jobs_give_the_same_results_as_one_process(smoke, tmp_path):
    _, first, summary, _ = smoke
    lines = []
    spec = BenchSpec(get_preset("gpt2", "smoke"), methods=list(METHODS), seeds=[0, 1], threads=1, jobs=2, progress=True)
    result = run_bench(spec, tmp_path / "jobs", log=lines.append)
    assert sorted(result.trained) == sorted((s, m) for s in (0, 1) for m in METHODS)
    for m in METHODS:
        a, b = first.runs[0][m], result.runs[0][m]
        assert [r.get("eval_loss") for r in a["history"]] == [r.get("eval_loss") for r in b["history"]], m
        assert a["fit_flops"] == b["fit_flops"] and b["threads"] == 1
    assert result.runs[1]["scratch"]["eval_loss"] != result.runs[0]["scratch"]["eval_loss"]  # seed 1 is its own
    parallel = summarise(result)
    for m in METHODS:
        assert parallel["per_seed"][0][m]["flop_savings"] == summary["per_seed"][0][m]["flop_savings"]
    assert any("[seed 1] ligo: fit: 3/3" in line for line in lines)  # workers' progress lines reach the log
    assert any("[seed 0] scratch: train: 20/20" in line for line in lines)
    again = run_bench(BenchSpec(get_preset("gpt2", "smoke"), methods=list(METHODS), seeds=[0, 1], threads=1, jobs=2),
                      tmp_path / "jobs", log=lambda _: None)
    assert again.trained == []


def test_redo_reruns_finished_runs(smoke, tmp_path):
    out, first, _, _ = smoke
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    spec = BenchSpec(get_preset("gpt2", "smoke"), methods=["scratch", "exact"], seeds=[0], redo=True)  # default threads
    again = run_bench(spec, copy, log=lambda _: None)
    assert sorted(again.trained) == [(0, "exact"), (0, "scratch")]
    assert again.runs[0]["exact"]["threads"] == 1
    assert [r.get("eval_loss") for r in again.runs[0]["exact"]["history"]] == \
        [r.get("eval_loss") for r in first.runs[0]["exact"]["history"]]


def test_busy_runs_mark_the_wall_time_figures(smoke):
    _, result, _, _ = smoke
    import copy

    fake = copy.deepcopy(result)
    for r in fake.runs[0].values():
        r["load"] = {"max": 1.0, "mean": 1.0, "cores": 2, "busy": False}
    calm = summarise(fake)
    assert not calm["busy_runs"] and "*" not in text_table(calm)
    fake.runs[0]["ligo"]["load"] = {"max": 7.5, "mean": 6.0, "cores": 2, "busy": True}
    busy = summarise(fake)
    assert busy["methods"]["ligo"]["wall_unreliable"] and not busy["methods"]["exact"]["wall_unreliable"]
    assert "1 of 3 runs (up to 7.5 on 2 cores)" in text_table(busy)
    assert "wall times unreliable" in report_markdown(busy)
    fake.runs[0]["scratch"]["load"] = fake.runs[0]["ligo"]["load"]  # scratch's seconds are every method's reference
    assert all(t["wall_unreliable"] for t in summarise(fake)["methods"].values())


def test_progress_lines_outside_a_terminal():
    from growkit.progress import LineProgress, lines_to, progress_bar

    got = []
    with lines_to(got.append, every=0.0):
        bar = progress_bar(3, "train", enabled=False)
        assert isinstance(bar, LineProgress)
        bar.set_postfix(loss="4.2")
        bar.update()
        bar.update()
        bar.close()
    assert got == ["train: 1/3 (loss 4.2), 0 s", "train: 2/3 (loss 4.2), 0 s"]
    assert not isinstance(progress_bar(3, "train", enabled=False), LineProgress)  # outside the block: tqdm
    quiet = []
    with lines_to(quiet.append, every=0.0):
        other = progress_bar(3, "train", enabled=True, main=False)
        other.update()
        other.close()
    assert quiet == []  # a process other than rank 0 shows nothing


def test_other_settings_in_the_same_folder_are_refused(smoke):
    out = smoke[0]
    spec = BenchSpec(get_preset("gpt2", "smoke").replace(budget_steps=7), methods=["scratch"], seeds=[0])
    with pytest.raises(GrowError, match="other settings"):
        run_bench(spec, out, log=lambda _: None)


def test_methods_run_scratch_first_and_an_unknown_one_is_refused():
    from growkit.bench import runner

    assert runner.resolve_methods(["exact", "mango", "scratch", "ligo"]) == ["scratch", "exact", "mango", "ligo"]
    with pytest.raises(GrowError, match="unknown method"):
        runner.resolve_methods(["scratch", "nonsense"])


def test_report_marks_not_reached(smoke):
    _, result, _, _ = smoke
    import copy

    fake = copy.deepcopy(result)
    for rec in fake.runs[0]["exact"]["history"]:
        if "eval_loss" in rec:
            rec["eval_loss"] += 10.0
    summary = summarise(fake)
    assert summary["methods"]["exact"]["flop_savings"]["n"] == 0
    assert "not reached" in text_table(summary)


def test_warnings_flag_a_target_too_close_to_the_small_model(smoke):
    _, result, _, _ = smoke
    import copy

    fake = copy.deepcopy(result)
    scratch_final = [r["eval_loss"] for r in fake.runs[0]["scratch"]["history"] if "eval_loss" in r][-1]
    fake.sources[0]["eval_loss"] = scratch_final * 1.005
    summary = summarise(fake)
    assert summary["margin_below_source"][0] == pytest.approx(0.005 / 1.005)
    assert any("only 0.5% below the small model's" in w for w in warnings(summary))
    assert "only 0.5% below" in report_markdown(summary)
    fake.sources[0]["eval_loss"] = scratch_final * 1.5
    assert not any("small model" in w for w in warnings(summarise(fake)))


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_tiny_long_fits_cost_at_most_five_percent_of_its_budget(family, tmp_path):
    from growkit.arch import adapter_for
    from growkit.bench.runner import _fit_flops, _source_config, load_data
    from growkit.flops import flops_per_batch
    from growkit.io import model_class
    from growkit.ops import get_method

    preset = get_preset(family, "tiny-long")
    tiny = get_preset(family, "tiny")
    assert (preset.source, preset.target, preset.source_budget) == (tiny.source, tiny.target, tiny.source_budget)
    assert preset.budget.steps == 2500 and preset.fit_steps == 100
    spec = BenchSpec(preset.replace(text_chars=200_000), methods=["scratch"], seeds=[0])
    data = load_data(spec, tmp_path)
    config = _source_config(spec, data)
    source = model_class(config)(config)
    target = preset.target_config(config)
    step = flops_per_batch(target, next(data.train_batches(0)))
    checks = len(FitConfig(steps=preset.fit_steps).check_steps()) + 1  # a fit that never stops early
    for method in ("ligo", "mango"):
        adapter = adapter_for(source)
        operator = get_method(method).build(adapter.to_canonical(source), adapter.dims(target))
        per_step, materialise, forward = _fit_flops(operator, model_class(target)(target), data, 0)
        per_check = materialise + FitConfig.eval_batches * forward
        budget = preset.budget.steps * step
        share = (preset.fit_steps * per_step + materialise) / budget
        # the 100 fit steps: at most 5% of the budget for LiGO; Mango fits only when asked (its default takes the
        # start), and a 100-step fit at its default rank 3 (the start's two terms and the mixing term) reaches 6.3%
        assert 0.03 < share <= (0.05 if method == "ligo" else 0.065), (method, share)
        assert checks * per_check / budget < 0.005, (method, checks)  # the held-out checks of a fit that never stops
    with pytest.raises(GrowError, match="tiny-long"):
        get_preset("vit", "tiny-long")


# --- the command line -------------------------------------------------------------------
def test_cli_parses_seeds_and_options():
    from growkit.cli.bench import parse_options, parse_seeds

    assert parse_seeds("2") == [0, 1] and parse_seeds("0,3") == [0, 3] and parse_seeds("0,") == [0]
    with pytest.raises(GrowError, match="to run seed 0 alone, write --seeds 0,"):
        parse_seeds("0")
    assert parse_options(["mango:rank=2", "ligo:init=stackbert", "mango:lr=0.5"]) == {
        "mango": {"rank": 2, "lr": 0.5}, "ligo": {"init": "stackbert"}}
    for bad in ("0", "a", "1,1"):
        with pytest.raises(GrowError):
            parse_seeds(bad)
    with pytest.raises(GrowError):
        parse_options(["rank=2"])


def test_cli_grown_schedule_goes_to_the_preset_and_bad_values_are_refused():
    from growkit.cli import build_parser
    from growkit.cli.bench import build_spec

    parse = build_parser().parse_args
    spec = build_spec(parse(["bench", "--preset", "smoke", "--grown-lr", "1e-3", "--grown-warmup", "5"]))
    assert spec.preset.grown_train == {"train_lr": 1e-3, "train_warmup": 5}
    assert spec.preset.budget == get_preset("gpt2", "smoke").budget  # scratch's schedule is untouched
    for bad in (["--grown-lr", "0"], ["--grown-warmup", "-1"]):
        with pytest.raises(GrowError, match="--grown-lr/--grown-warmup/--grown-decay-fraction: train_"):
            build_spec(parse(["bench", "--preset", "smoke", *bad]))
    with pytest.raises(GrowError, match="--scratch-lr: train_lr"):
        build_spec(parse(["bench", "--preset", "smoke", "--scratch-lr", "-1"]))


def test_scratch_and_the_grown_targets_can_each_take_their_own_lr():
    """The causal tiny presets train every target at scratch's best lr; --scratch-lr and --grown-lr split it."""
    from growkit.bench.report import _own_schedules
    from growkit.cli import build_parser
    from growkit.cli.bench import build_spec

    tiny = get_preset("llama", "tiny")
    assert tiny.budget.lr == 3e-3 == get_preset("gpt2", "tiny-long").budget.lr
    assert tiny.scratch_train == {} and tiny.grown_train == {"train_decay_fraction": 0.75}
    assert get_preset("gpt2", "tiny-long").grown_train == tiny.grown_train == get_preset("gpt2", "tiny").grown_train
    assert get_preset("bert", "tiny").grown_train == {} == get_preset("gpt2", "smoke").grown_train
    assert get_preset("bert", "tiny").budget.lr == 2e-3  # its sweep has not been run
    parse = build_parser().parse_args
    spec = build_spec(parse(["bench", "--preset", "tiny", "--scratch-lr", "4e-3", "--grown-lr", "1e-3"]))
    assert spec.preset.scratch_train == {"train_lr": 4e-3}
    assert spec.preset.grown_train == {"train_lr": 1e-3, "train_decay_fraction": 0.75}  # the flag keeps the decay
    assert _own_schedules(spec.preset.to_dict()) == (
        "; scratch trains with peak lr 0.004 instead; every grown target trains with peak lr 0.001, "
        "the lr decay ending at 75% of the steps instead")
    spec = build_spec(parse(["bench", "--preset", "tiny", "--lr", "5e-4", "--grown-warmup", "5"]))
    assert spec.preset.budget.lr == 5e-4 and spec.preset.scratch_train == {}
    assert spec.preset.grown_train == {"train_warmup": 5, "train_decay_fraction": 0.75}
    spec = build_spec(parse(["bench", "--preset", "tiny", "--grown-decay-fraction", "1"]))  # the plain schedule
    assert spec.preset.grown_train == {"train_decay_fraction": 1} and spec.preset.scratch_train == {}
    assert _own_schedules(spec.preset.to_dict()) == (
        "; every grown target trains with the lr decay ending at 100% of the steps instead")
    with pytest.raises(GrowError, match="train_decay_fraction must be within"):
        build_spec(parse(["bench", "--preset", "tiny", "--grown-decay-fraction", "1.5"]))


def test_scratch_variants_run_in_worker_processes(tmp_path):
    """One point of scratch's lr sweep (scratch+train_lr=...) trains in a worker like any other entry."""
    spec = BenchSpec(get_preset("gpt2", "smoke"), methods=["scratch", "scratch+train_lr=1e-3"], seeds=[0], threads=1,
                     jobs=2)
    result = run_bench(spec, tmp_path / "sweep", log=lambda _: None)
    assert sorted(result.trained) == [(0, "scratch"), (0, "scratch+train_lr=1e-3")]
    peak = max(r["lr"] for r in result.runs[0]["scratch+train_lr=1e-3"]["history"] if "lr" in r)
    assert peak == pytest.approx(1e-3, rel=0.02)


def test_cli_bench_smoke(tmp_path, capsys):
    from growkit.cli import main

    out = tmp_path / "cli"
    assert main(["bench", "--family", "gpt2", "--preset", "smoke", "--methods", "scratch,stackbert",
                 "--out", str(out), "--threads", "1", "--steps", "10", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "stackbert" in text and "report.md" in text
    assert (out / "report.md").is_file() and not (out / "loss_vs_flops.png").exists()


def test_a_variant_joins_a_finished_benchmark(smoke):
    out, first, _, _ = smoke
    lines = []
    spec = _spec(["scratch", "exact", "ligo", "ligo+fit_steps=2"])
    result = run_bench(spec, out, log=lines.append)
    assert result.trained == [(0, "ligo+fit_steps=2")]  # scratch, exact and ligo are reused
    run = result.runs[0]["ligo+fit_steps=2"]
    assert run["fit"]["steps"] == 2 and run["run_settings"]["fit_steps"] == 2
    assert run["fit_flops"] < first.runs[0]["ligo"]["fit_flops"]
    summary = summarise(result)
    assert "ligo+fit_steps=2" in summary["methods"]
    # changing the plain entry's fit settings would silently change a finished run: refused
    other = BenchSpec(get_preset("gpt2", "smoke").replace(fit_steps=5), methods=["ligo"], seeds=[0], threads=1)
    with pytest.raises(GrowError, match="variant"):
        run_bench(other, out, log=lambda _: None)


def test_variant_parsing():
    from growkit.bench.variants import parse_variant

    v = parse_variant("mango+rank=2+fit_steps=300+fit_lr=3e-3+init=interpolate")
    assert v.method == "mango" and v.options == {"rank": 2, "init": "interpolate"}
    assert v.fit == {"fit_steps": 300, "fit_lr": 0.003}
    for bad in ("mango+rank", "scratch+rank=2", "ligo+fit_steps=-1", "+rank=2"):
        with pytest.raises(GrowError):
            parse_variant(bad)
    v = parse_variant("scratch+train_lr=3e-3+train_warmup=5")  # one point of scratch's lr sweep
    assert v.train == {"train_lr": 0.003, "train_warmup": 5} and not v.options and not v.fit
    assert parse_variant("mango+train_decay_fraction=0.75").train == {"train_decay_fraction": 0.75}
    for bad in ("scratch+train_lr=0", "net2net+train_warmup=-1", "net2net+train_warmup=1.5",
                "mango+train_decay_fraction=0", "mango+train_decay_fraction=2"):
        with pytest.raises(GrowError, match="train_"):
            parse_variant(bad)
    from growkit.bench import runner

    with pytest.raises(GrowError, match="learned"):
        runner.resolve_methods(["exact+fit_steps=3"])


def test_a_method_that_fits_nothing_costs_one_materialisation(smoke):
    """Mango's default takes its start: the run pays one materialisation, records no fit lr and no step cost."""
    out, _, _, _ = smoke
    result = run_bench(_spec(["scratch", "exact", "mango"]), out, log=lambda _: None)
    assert result.trained == [(0, "mango")]
    run = result.runs[0]["mango"]
    fit = run["fit"]
    assert run["run_settings"]["fit_steps"] == 0 and fit["steps"] == 0 and fit["held_out"] == []
    assert fit["lr"] is None and fit["flops_per_step"] is None and fit["flops_per_check"] is None
    assert run["fit_flops"] == fit["flops_materialise"] > 0
    assert run["history"][0]["flops"] == run["fit_flops"]
    assert "mango" not in write_report(result, plots=False)["fit_per_step"]


def test_grown_targets_take_their_own_schedule_and_scratch_keeps_the_budget(smoke):
    """--grown-lr: one shared schedule for every grown target; scratch and the earlier runs are reused."""
    out, first, _, _ = smoke
    preset = get_preset("gpt2", "smoke").replace(grown_train={"train_lr": 1e-4, "train_warmup": 0})
    spec = BenchSpec(preset, methods=["scratch", "exact+noise=0.02", "exact+noise=0.02+train_lr=2e-4"],
                     seeds=[0], threads=1)
    assert spec.fingerprint() == _spec().fingerprint()  # a per-run setting: the benchmark stays the same
    lines = []
    result = run_bench(spec, out, log=lines.append)
    assert (0, "scratch") not in result.trained  # scratch trains as before, so it is reused
    runs = result.runs[0]
    assert runs["exact+noise=0.02"]["run_settings"]["train"] == {"train_lr": 1e-4, "train_warmup": 0}
    assert runs["exact+noise=0.02+train_lr=2e-4"]["run_settings"]["train"] == {"train_lr": 2e-4, "train_warmup": 0}
    peak = {name: max(r["lr"] for r in runs[name]["history"] if "lr" in r) for name in runs}
    assert peak["exact+noise=0.02"] == pytest.approx(1e-4, rel=0.02)  # logged after the step's decay
    assert peak["exact+noise=0.02+train_lr=2e-4"] == pytest.approx(2e-4, rel=0.02)
    assert peak["scratch"] == pytest.approx(preset.budget.lr, rel=0.02)
    first_lr = [r["lr"] for r in runs["exact+noise=0.02"]["history"] if "lr" in r][0]
    assert first_lr == pytest.approx(1e-4, rel=0.02)  # no warm-up: the peak from the first step
    assert [r["lr"] for r in runs["scratch"]["history"] if "lr" in r][0] <= preset.budget.lr / 2  # scratch warms up
    assert "every grown target trains with peak lr 0.0001, warmup 0 instead" in report_markdown(summarise(result))
    # the plain entry already ran with the preset's schedule: changing it under the same name is refused
    with pytest.raises(GrowError, match="variant"):
        run_bench(BenchSpec(preset, methods=["exact"], seeds=[0], threads=1), out, log=lambda _: None)


def test_cli_demo_runs_the_reduced_bench_and_keeps_its_models(tmp_path, capsys, monkeypatch):
    from growkit.bench import presets
    from growkit.cli import main
    from growkit.cli.demo import DEMO_METHODS, demo_spec

    spec = demo_spec()
    assert spec.preset.family == "gpt2" and spec.methods == list(DEMO_METHODS) and spec.jobs == 2
    assert spec.preset.budget.steps < get_preset("gpt2", "tiny").budget.steps
    monkeypatch.setattr(presets, "demo_preset", lambda: get_preset("gpt2", "smoke").replace(budget_steps=8, budget_eval_every=4))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--jobs", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "bert2bert" in text and "ligo" in text and "savings_curve.png" in text
    assert "train: 8/8" in text  # progress lines (stderr is no terminal here)
    assert (out / "report.md").is_file() and (out / "loss_vs_seconds.png").is_file()
    kept = [line.split(": ", 1)[1].strip() for line in text.splitlines() if line.startswith(("small model:", "grown ("))]
    assert len(kept) == 1 + len(DEMO_METHODS) - 1
    for folder in kept:
        assert (Path(folder) / "model.safetensors").is_file(), folder
    assert main(["demo", "--out", str(out), "--jobs", "1", "--threads", "1"]) == 0
    assert "0 runs trained now" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--jobs", "1", "--threads", "1", "--redo"]) == 0
    assert "4 runs trained now" in capsys.readouterr().out


def _workers(pid: int) -> list[int]:
    """The process's multiprocessing workers (not its resource tracker)."""
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc")
def test_sigterm_stops_the_parallel_benchmark_and_its_workers_now(tmp_path):
    """A stopped `growkit bench --jobs 2` must not wait for its workers' running runs (each can take minutes)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "growkit", "bench", "--family", "gpt2", "--preset", "smoke", "--jobs", "2",
               "--methods", "scratch,exact", "--steps", "1000000", "--out", str(tmp_path / "bench")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        workers, deadline, started = [], time.monotonic() + 240, 0
        for line in proc.stdout:  # both workers are in a run
            started += "training 1000000 steps" in line
            if started == 2 or time.monotonic() > deadline:
                break
        assert started == 2, "the runs did not start"
        workers = _workers(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)  # the workers hold the pipe too: it closes when every process has gone
        assert proc.returncode == 130
        assert not [pid for pid in workers if _alive(pid)]
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
