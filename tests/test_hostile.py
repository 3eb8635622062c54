"""Hostile inputs: each is refused with one clear line and exit code 1, and nothing is written."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from growkit.arch.tiny import tiny_model
from growkit.cli import main
from growkit.data import embedded_text, train_bpe
from growkit.io import save_pretrained

VOCAB = 512
SMALL = ["--seq-len", "16", "--batch-size", "4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB), root / "small")
    (root / "text.txt").write_text(embedded_text(30_000), encoding="utf-8")
    return root


# --- ways to spoil an input; each takes the case's folder and returns nothing ----------------


def _src(tmp: Path, base: Path) -> Path:
    shutil.copytree(base / "small", tmp / "src")
    return tmp / "src"


def corrupt_weights(tmp, base):
    (_src(tmp, base) / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")


def truncated_weights(tmp, base):
    path = _src(tmp, base) / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def pickled_weights(tmp, base):
    src = _src(tmp, base)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")


def nan_weights(tmp, base):
    path = _src(tmp, base) / "model.safetensors"
    tensors = load_file(str(path))
    tensors["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_config(tmp, base, edit):
    path = _src(tmp, base) / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def config_wrong_type(tmp, base):
    _edit_config(tmp, base, lambda c: c.update(n_embd="32"))


def config_float_layers(tmp, base):
    _edit_config(tmp, base, lambda c: c.update(n_layer=2.5))


def config_missing_model_type(tmp, base):
    _edit_config(tmp, base, lambda c: c.pop("model_type"))


def config_missing_heads(tmp, base):
    _edit_config(tmp, base, lambda c: c.pop("n_head"))  # the default (12) does not divide 32


def config_negative_vocab(tmp, base):
    _edit_config(tmp, base, lambda c: c.update(vocab_size=-1))


def config_not_json(tmp, base):
    (_src(tmp, base) / "config.json").write_text("{not json")


def config_a_list(tmp, base):
    (_src(tmp, base) / "config.json").write_text("[1, 2]")


def no_source(tmp, base):
    pass


def empty_data(tmp, base):
    _src(tmp, base)
    (tmp / "data.txt").write_text("  \n\n ")


def non_utf8_data(tmp, base):
    _src(tmp, base)
    (tmp / "data.txt").write_bytes("caf\u00e9 ".encode("latin-1") * 100)


def tiny_data(tmp, base):
    _src(tmp, base)
    (tmp / "data.txt").write_text("a few words only")


def big_tokenizer(tmp, base):
    save_pretrained(tiny_model("gpt2"), tmp / "src")  # vocab_size 64
    train_bpe(embedded_text(20_000), 300).save_pretrained(str(tmp / "src"))


def corrupt_tokenizer(tmp, base):
    (_src(tmp, base) / "tokenizer.json").write_text('{"version": "1.0", "model": 7}')


def good(tmp, base):
    _src(tmp, base)


GROW = ["grow", "src", "out", "--hidden", "64", "--layers", "3"]
LIGO = [*GROW, "--method", "ligo", "--steps", "2", *SMALL]
TRAIN = ["train", "src", "--out", "out", "--steps", "2", "--no-progress", *SMALL]
TEXT = ["--data", "text.txt"]

CASES = [
    # (id, spoil, argv, message)
    ("corrupt-safetensors", corrupt_weights, GROW, r"cannot load the weights in src \(corrupt or truncated"),
    ("truncated-safetensors", truncated_weights, GROW, r"cannot load the weights in src \(corrupt or truncated"),
    ("truncated-safetensors-train", truncated_weights, [*TRAIN, *TEXT], r"cannot load the weights"),
    ("pickle-only", pickled_weights, GROW, r"pickled weights .*convert them to model\.safetensors"),
    ("nan-weights", nan_weights, GROW, r"NaN or infinite values \(first in transformer\.h\.0\.mlp\.c_fc\.weight\)"),
    ("config-wrong-type", config_wrong_type, GROW, r"config\.json: .*n_embd.* expected int, got str"),
    ("config-float", config_float_layers, [*TRAIN, *TEXT], r"config\.json: .*n_layer.* expected int, got float"),
    ("config-no-model-type", config_missing_model_type, GROW, r"config\.json has no model_type"),
    ("config-missing-key", config_missing_heads, GROW, r"12 attention heads do not divide hidden size 32"),
    ("config-negative", config_negative_vocab, [*TRAIN, *TEXT], r"vocab_size must be a positive integer, got -1"),
    ("config-not-json", config_not_json, GROW, r"config\.json is not valid JSON"),
    ("config-list", config_a_list, GROW, r"config\.json holds a JSON list"),
    ("no-source", no_source, GROW, r"model folder src does not exist"),
    ("absurd-hidden", good, [*GROW[:4], str(10**9)], r"needs about .* EiB of memory .* but only .* is free"),
    ("absurd-layers-ligo", good, [*LIGO[:6], str(10**9), *LIGO[7:], *TEXT], r"needs about .* of memory .* is free"),
    ("absurd-batch-train", good, [*TRAIN, *TEXT, "--batch-size", str(10**9)], r"training needs about .* is free"),
    ("negative-size", good, [*GROW[:4], "-64"], r"hidden_size must be a positive integer, got -64"),
    ("seq-len-too-long", good, [*TRAIN, *TEXT, "--seq-len", "4096"], r"--seq-len 4096 exceeds the model's 32 positions"),
    ("empty-data", empty_data, [*LIGO, "--data", "data.txt"], r"data\.txt holds no text"),
    ("empty-data-train", empty_data, [*TRAIN, "--data", "data.txt"], r"data\.txt holds no text"),
    ("non-utf8-data", non_utf8_data, [*TRAIN, "--data", "data.txt"], r"data\.txt is not UTF-8 text"),
    ("too-little-data", tiny_data, [*LIGO, "--data", "data.txt"], r"fewer than one batch"),
    ("missing-data", good, [*LIGO, "--data", "nowhere.txt"], r"data path nowhere\.txt does not exist"),
    ("tokenizer-too-big", big_tokenizer, [*LIGO, *TEXT], r"the tokenizer has 300 tokens but the model's vocab_size is 64"),
    ("tokenizer-too-big-train", big_tokenizer, [*TRAIN, *TEXT], r"tokenizer has 300 tokens"),
    ("corrupt-tokenizer", corrupt_tokenizer, [*TRAIN, *TEXT], r"cannot load the tokenizer in src"),
    ("unknown-method", good, [*GROW, "--method", "magic"], r"unknown method 'magic'"),
    ("learned-with-width", good, [*LIGO, *TEXT, "--width", "aki"], r"--width does not apply to ligo \(a learned method\)"),
    ("fixed-with-steps", good, [*GROW, "--steps", "50"],
     r"--steps does not apply to exact \(a fixed method\); exact takes --noise, --width, --depth$"),
    ("fixed-with-device", good, [*GROW, "--method", "net2net", "--device", "cpu"], r"--device does not apply to net2net"),
    ("ligo-with-rank", good, [*LIGO, *TEXT, "--rank", "4"], r"--rank does not apply to ligo \(a learned method\)"),
    ("mango-start-with-data", good, [*GROW, "--method", "mango", *TEXT],
     r"mango with 0 fit steps takes its start and fits nothing, so --data would be ignored; pass --steps N to fit"),
    ("method-typo", good, [*GROW, "--method", "mangoo"], r"unknown method 'mangoo'; did you mean 'mango'\?"),
    ("hidden-not-head-multiple", good, [*GROW[:3], "--hidden", "100"],
     r"--hidden 100 is not a multiple of the source's head_dim 8: .* such as 96 or 104$"),
    ("exact-head-counts", good, [*GROW[:3], "--hidden", "48"],
     r"hidden size 32 -> 48 \(x1\.5\); FFN size 128 -> 192 \(x1\.5\); attention heads \(head counts\) 4 -> 6 "
     r"\(x1\.5\) are not; .* or use net2net or bert2bert"),
    ("hub-id", good, ["grow", "openai-community/gpt2", "out", "--hidden", "64"],
     r"does not exist; growkit reads local folders only .*`hf download openai-community/gpt2 --local-dir gpt2`"),
    ("bf16-on-cpu", good, [*TRAIN, *TEXT, "--device", "cpu", "--precision", "bf16"], r"bf16 needs a CUDA GPU"),
]


@pytest.mark.parametrize("spoil, argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_and_nothing_is_written(spoil, argv, message, base, tmp_path, monkeypatch, capsys):
    if "text.txt" in argv:
        shutil.copy(base / "text.txt", tmp_path / "text.txt")
    spoil(tmp_path, base)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"growkit {argv[0]}: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_an_existing_output_is_left_unchanged(base, tmp_path, monkeypatch, capsys):
    good(tmp_path, base)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    for argv in (GROW, [*TRAIN, "--data", str(base / "text.txt")]):
        assert main(list(argv)) == 1
        assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_a_fit_killed_while_cleaning_up_is_named_on_rerun(base, tmp_path, monkeypatch, capsys):
    """A kill after OUT_DIR is written but before OUT_DIR.partial is removed: the rerun says so, and writes nothing."""
    good(tmp_path, base)
    monkeypatch.chdir(tmp_path)
    argv = [*LIGO[:-len(SMALL)], "--steps", "2", "--data", str(base / "text.txt"), *SMALL]
    assert main(list(argv)) == 0
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "fit-2.safetensors").write_bytes(b"left over")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert "holds a finished model" in err and "out.partial" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_nan_in_training_names_the_step_and_keeps_the_last_good_checkpoint(base, tmp_path, monkeypatch, capsys):
    good(tmp_path, base)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "src", "--out", "out", "--steps", "10", "--lr", "1e8", "--checkpoint-every", "1", "--no-progress",
            "--data", str(base / "text.txt"), *SMALL]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "the loss became non-finite at step 2 of 10" in err and "after step 1" in err
    out = tmp_path / "out"
    assert not (out / "final").exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "metrics.jsonl", "run.json"]
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "checkpoint-1" / "model.safetensors")).values())


def test_nan_in_the_fit_names_the_step_and_keeps_the_last_good_checkpoint(base, tmp_path, monkeypatch, capsys):
    good(tmp_path, base)
    monkeypatch.chdir(tmp_path)
    argv = [*LIGO[:-len(SMALL)], "--steps", "8", "--lr", "1e6", "--checkpoint-every", "1",
            "--data", str(base / "text.txt"), *SMALL]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "the fit's loss became non-finite at step 2 of 8" in err and "after step 1" in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "out.partial").iterdir()) == ["fit-1.safetensors", "run.json"]


def test_no_remote_code_and_no_pickles_in_the_package():
    """growkit never asks transformers to run a model's own code and never unpickles."""
    root = Path(__file__).resolve().parents[1] / "growkit"
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "trust_remote_code" not in text, path
        assert "import pickle" not in text, path
        for line in text.splitlines():
            assert "torch.load(" not in line or "weights_only=True" in line, (path, line)


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: its mode and bytes (the source must stay byte-for-byte as it was)."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, message", [
    (["grow", "src", "src", "--hidden", "64", "--overwrite"], r"OUT_DIR src is the source folder src;"),
    (["grow", "src", "src/big", "--hidden", "64"], r"OUT_DIR src/big lies inside the source folder src;"),
    (["grow", "src", "src/big", "--hidden", "64", "--method", "ligo", "--overwrite", "--dry-run"], r"lies inside"),
    (["grow", "work/src", "work", "--hidden", "64", "--overwrite"], r"OUT_DIR work contains the source folder work/src;"),
    (["grow", "src", "link", "--hidden", "64", "--overwrite"], r"OUT_DIR link is the source folder src \(both resolve to "),
    (["grow", "src", "link/big", "--hidden", "64"], r"OUT_DIR link/big lies inside the source folder src;"),
    (["grow", "out.partial", "out", "--hidden", "64", "--method", "ligo"],
     r"the fit's checkpoint folder out\.partial is the source folder out\.partial;"),
    (["train", "src", "--out", "src"], r"--out src is the source folder src;"),
    (["train", "src", "--out", "src/run"], r"--out src/run lies inside the source folder src;"),
    (["train", "work/src", "--out", "work"], r"--out work contains the source folder work/src;"),
    (["train", "link", "--out", "src/run", "--dry-run"], r"--out src/run lies inside the source folder link;"),
])
def test_the_source_folder_is_never_written(argv, message, base, tmp_path, monkeypatch, capsys):
    """Output == source, inside it or around it (symlinks resolved), whatever the flags: one line, exit 1, source intact."""
    for name in ("src", "work/src", "out.partial"):
        shutil.copytree(base / "small", tmp_path / name)
    (tmp_path / "link").symlink_to(tmp_path / "src", target_is_directory=True)
    before = {name: _snapshot(tmp_path / name) for name in ("src", "work", "out.partial")}
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert "growkit never writes over the model it reads" in lines[0]
    assert {name: _snapshot(tmp_path / name) for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "out.partial", "src", "work"]
