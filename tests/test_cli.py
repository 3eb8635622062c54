"""The command line explains itself: help with examples, exit codes, one-line errors, dry runs and estimates."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from growkit.arch.tiny import tiny_model
from growkit.cli import COMMANDS, build_parser, main
from growkit.core.errors import GrowError
from growkit.data import embedded_text
from growkit.io import save_pretrained


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
