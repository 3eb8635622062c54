"""The command line explains itself: help with examples, exit codes, one-line errors, dry runs and estimates."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

from growkit.arch.tiny import tiny_model
from growkit.cli import COMMANDS, build_parser, main
from growkit.core.errors import GrowError
from growkit.data import embedded_text
from growkit.io import load_pretrained, save_pretrained


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_pretrained(tiny_model("gpt2", vocab_size=512), root / "small")
    (root / "text.txt").write_text(embedded_text(30_000), encoding="utf-8")
    return root


def _exists(command: str) -> bool:
    try:
        importlib.import_module(f"growkit.cli.{command}")
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    if not _exists(command):
        pytest.skip(f"growkit.cli.{command} is not written yet")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and f"growkit {command}" in text.split("example", 1)[1]
    assert "--debug" in text


def test_the_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and all(name in text for name in COMMANDS if _exists(name))
    assert set(build_parser()._subparsers._group_actions[0].choices) <= set(COMMANDS)


@pytest.mark.parametrize("argv", [[], ["grow"], ["grow", "a", "b", "--hidden", "many"], ["nonsense"], ["train", "m"]])
def test_usage_errors_exit_with_2(argv, capsys):
    if not argv:
        assert main([]) == 2
        return
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["grow", "missing", "out", "--hidden", "64"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == "growkit grow: error: model folder missing does not exist\n"
    with pytest.raises(GrowError):
        main(["--debug", *argv])
    with pytest.raises(GrowError):
        main([*argv, "--debug"])  # also after the command
    monkeypatch.setenv("GROWKIT_DEBUG", "1")
    with pytest.raises(GrowError):
        main(argv)


def test_the_installed_command_exits_1_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "growkit", "inspect", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"growkit inspect: error: model folder {tmp_path / 'none'} does not exist"]


def _rows(text: str) -> dict[str, str]:
    return {line[:24].strip(): line[24:].strip() for line in text.splitlines() if len(line) > 24}


def test_grow_dry_run_prints_parameters_memory_and_flops_and_writes_nothing(base, tmp_path, capsys):
    out = tmp_path / "big"
    argv = ["grow", str(base / "small"), str(out), "--method", "ligo", "--hidden", "64", "--layers", "4",
            "--steps", "50", "--batch-size", "4", "--seq-len", "16", "--dry-run"]
    assert main(argv) == 0
    rows = _rows(capsys.readouterr().out)
    big = tiny_model("gpt2", vocab_size=512, n_embd=64, n_layer=4, n_head=8)
    assert rows["target parameters"] == f"{sum(p.numel() for p in big.parameters()):,}"
    assert rows["source parameters"] == f"{sum(p.numel() for p in tiny_model('gpt2', vocab_size=512).parameters()):,}"
    assert int(rows["operator parameters"].replace(",", "")) > 0
    assert rows["peak memory (estimate)"].split(" (")[0].endswith("MiB")
    assert "50 steps x 64 tokens" in rows["fit FLOPs"] and float(rows["train FLOPs per token"].replace(",", "")) > 0
    assert list(tmp_path.iterdir()) == []
    assert main(argv[:3] + ["--hidden", "64", "--dry-run"]) == 0  # a fixed method: the growth's memory
    assert "peak memory (estimate)" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


def test_train_dry_run_prints_the_estimate_without_loading_weights(base, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((base / "small" / "config.json").read_text())  # no weights at all
    assert main(["train", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--steps", "10", "--batch-size", "2",
                 "--seq-len", "8", "--dry-run"]) == 0
    rows = _rows(capsys.readouterr().out)
    params = sum(p.numel() for p in tiny_model("gpt2", vocab_size=512).parameters())
    assert rows["model parameters"] == f"{params:,}"
    weights, grads, adam = (f"{name} {4 * n * params / 1024:.1f} KiB" for name, n in
                            (("weights", 1), ("gradients", 1), ("AdamW state", 2)))
    assert weights in rows["peak memory (estimate)"] and adam in rows["peak memory (estimate)"]
    assert "10 steps x 16 tokens" in rows["training FLOPs"]
    assert not (tmp_path / "o").exists()


def test_a_run_larger_than_free_memory_is_refused_before_it_starts(base, tmp_path, monkeypatch, capsys):
    import growkit.estimate as estimate

    monkeypatch.setattr(estimate, "available_memory", lambda device="cpu", default=None: 100_000)
    argv = ["grow", str(base / "small"), str(tmp_path / "big"), "--hidden", "64"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "needs about" in err and "but only 97.7 KiB is free" in err
    assert not (tmp_path / "big").exists()
    monkeypatch.setenv(estimate.SKIP_ENV, "1")
    assert main(argv) == 0 and (tmp_path / "big" / "model.safetensors").is_file()


def test_learned_grow_writes_the_model_and_its_tokenizer(base, tmp_path, capsys):
    out = tmp_path / "big"
    assert main(["grow", str(base / "small"), str(out), "--method", "ligo", "--hidden", "64", "--steps", "3",
                 "--batch-size", "4", "--seq-len", "16", "--data", str(base / "text.txt")]) == 0
    assert "fit 3 steps" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]  # the checkpoint folder is gone
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    torch.manual_seed(0)  # the model and its tokenizer train on (run a step) with `growkit train`
    assert main(["train", str(out), "--out", str(tmp_path / "t"), "--steps", "1", "--batch-size", "4",
                 "--seq-len", "16", "--data", str(base / "text.txt"), "--no-progress"]) == 0


def test_mango_by_default_grows_its_start_without_data(base, tmp_path, capsys):
    out = tmp_path / "big"
    assert main(["grow", str(base / "small"), str(out), "--method", "mango", "--hidden", "64", "--layers", "4"]) == 0
    assert "fit 0 steps: the operator's start" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]
    grown = load_pretrained(out)
    assert (grown.config.n_layer, grown.config.n_embd) == (4, 64)


def test_mango_mix_from_the_command_line_keeps_the_function(base, tmp_path, capsys):
    out = tmp_path / "mixed"
    args = ["grow", str(base / "small"), str(out), "--method", "mango", "--hidden", "64", "--layers", "4"]
    assert main([*args, "--mix", "1", "--split", "even"]) == 1
    assert "mix needs split='keep'" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--mix", "1"]) == 0
    source, grown = load_pretrained(base / "small"), load_pretrained(out)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (grown(ids).logits - source(ids).logits).abs().max() < 1e-4


def test_help_and_methods_do_not_import_torch():
    """The parser and `growkit methods` are built from torch-free modules, so the command line starts fast."""
    code = ("import sys, runpy; sys.argv = ['growkit', '{}']\n"
            "try:\n    runpy.run_module('growkit', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'accelerate', 'numpy') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    for argv in ("--help", "methods"):
        proc = subprocess.run([sys.executable, "-c", code.format(argv)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", (argv, proc.stdout[-300:])
    proc = subprocess.run([sys.executable, "-c", code.replace("'{}'", "'grow', '--help'")], capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_methods_lists_every_registered_method_from_the_catalog(capsys):
    from growkit.core.catalog import CATALOG, DEPTH_OPS, WIDTH_OPS
    from growkit.ops import METHODS, methods
    from growkit.ops.depth import DEPTH_OPERATORS
    from growkit.ops.registry import WIDTH_OPERATORS

    assert main(["methods"]) == 0
    assert methods() == {name: info.summary for name, info in CATALOG.items()}
    assert all(METHODS[name].learned == info.learned for name, info in CATALOG.items())
    assert tuple(DEPTH_OPERATORS) == DEPTH_OPS and tuple(WIDTH_OPERATORS) == WIDTH_OPS
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:len(CATALOG)]]
    assert listed == list(CATALOG)


def test_train_final_holds_only_the_model_and_files_are_0644(base, tmp_path, monkeypatch, capsys):
    import os
    import stat

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        assert main(["train", str(base / "small"), "--out", "run", "--steps", "4", "--batch-size", "4", "--seq-len", "16",
                     "--data", str(base / "text.txt"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("trained GPT2LMHeadModel for 4 steps of 4 examples on cpu:")
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                       "tokenizer.json", "tokenizer_config.json"]
    assert "local_files_only" not in (final / "tokenizer_config.json").read_text()
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"]
    assert written and {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {"0o644"}
    # the default checkpoint interval is a tenth of --steps, and the last step's state is kept for an extension
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4"]


def test_an_interrupt_says_how_to_resume_and_from_which_step(base, tmp_path, monkeypatch, capsys):
    import growkit.train as train_module

    monkeypatch.chdir(tmp_path)
    argv = ["train", str(base / "small"), "--out", "run", "--steps", "6", "--checkpoint-every", "2", "--batch-size", "4",
            "--seq-len", "16", "--data", str(base / "text.txt"), "--no-progress"]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupt)  # before the first step: nothing to resume yet
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "growkit train: interrupted; no checkpoint was written yet (see --checkpoint-every), so rerunning the same "
        "command starts over")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "prune", interrupt)  # right after checkpoint-2 is written
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "growkit train: interrupted; rerun the same command to resume from step 2 (checkpoint in run/checkpoint-2)")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert "resuming from step 2" in capsys.readouterr().err


def test_a_finished_constant_schedule_run_is_extended_exactly(base, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    common = ["--schedule", "constant", "--eval-every", "3", "--checkpoint-every", "3", "--batch-size", "4",
              "--seq-len", "16", "--data", str(base / "text.txt"), "--no-progress"]
    assert main(["train", str(base / "small"), "--out", "long", "--steps", "6", *common]) == 0
    assert main(["train", str(base / "small"), "--out", "short", "--steps", "3", *common]) == 0
    capsys.readouterr()
    assert main(["train", str(base / "small"), "--out", "short", "--steps", "6", *common]) == 0
    assert "extending the run from step 3 to 6" in capsys.readouterr().err
    a, b = load_file("long/final/model.safetensors"), load_file("short/final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    wall = ("seconds", "tokens_per_s")
    metrics = [[{k: v for k, v in json.loads(line).items() if k not in wall} for line in open(f"{run}/metrics.jsonl")]
               for run in ("long", "short")]
    assert metrics[0] == metrics[1]
    # a decaying schedule depends on the run's length: extending it is refused with that reason, nothing changes
    cosine = [c if c != "constant" else "cosine" for c in common]
    assert main(["train", str(base / "small"), "--out", "cos", "--steps", "3", *cosine]) == 0
    before = sorted(p.name for p in (tmp_path / "cos").iterdir())
    assert main(["train", str(base / "small"), "--out", "cos", "--steps", "6", *cosine]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cosine learning-rate schedule depends on that length" in err and "--schedule constant" in err
    assert sorted(p.name for p in (tmp_path / "cos").iterdir()) == before
