"""Kill and resume: a run SIGKILLed mid-way and rerun with the same command ends bit-exactly like an uninterrupted one."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import growkit
from growkit.arch.tiny import tiny_model
from growkit.core.errors import GrowError
from growkit.resumable.state import load_state, save_state
from growkit.cli import main
from growkit.data import build_task_data, embedded_text, tokenize_corpus, train_bpe
from growkit.io import save_pretrained

VOCAB = 512
COMMON = ["--seq-len", "16", "--batch-size", "4"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB), root / "small")
    (root / "text.txt").write_text(embedded_text(30_000), encoding="utf-8")
    return root


def _kill_mid_run(argv: list[str], cwd: Path, checkpoints: str, every: int) -> int:
    """Start ``growkit argv`` in a subprocess and SIGKILL it at a random moment after its first checkpoints.

    The moment is random: after the K-th checkpoint (K in 1..3) has appeared, plus a
    random delay of up to 50 ms. The seed is returned for failure messages;
    GROWKIT_KILL_SEED replays one.
    """
    seed = int(os.environ.get("GROWKIT_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    wanted = every * rng.randint(1, 3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "growkit", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not any(int(re.search(r"-(\d+)", p.name).group(1)) >= wanted for p in cwd.glob(checkpoints)):
            assert proc.poll() is None, f"the run ended before checkpoint {wanted}: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        assert proc.poll() is None, "the run finished before it could be killed; give it more steps"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return seed


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def _metrics(folder: Path) -> list[dict]:
    wall = ("seconds", "tokens_per_s")
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in wall} for line in lines]


def test_train_killed_and_rerun_equals_an_uninterrupted_run(work, capsys, monkeypatch):
    args = ["train", "small", *COMMON, "--data", "text.txt", "--steps", "80", "--eval-every", "10",
            "--checkpoint-every", "5", "--no-progress"]
    monkeypatch.chdir(work)
    assert main([*args, "--out", "ref"]) == 0
    seed = _kill_mid_run([*args, "--out", "run"], work, "run/checkpoint-*", every=5)
    assert not (work / "run" / "final").exists()
    capsys.readouterr()
    assert main([*args, "--out", "run"]) == 0  # the same command again
    assert "resuming from step" in capsys.readouterr().err, f"GROWKIT_KILL_SEED={seed}"
    _assert_same_weights(work / "ref" / "final", work / "run" / "final")
    assert _metrics(work / "ref") == _metrics(work / "run"), f"GROWKIT_KILL_SEED={seed}"
    # the resumable state itself is a safetensors file with JSON metadata (no pickle), and complete
    assert sorted(p.name for p in (work / "run").iterdir()) == ["checkpoint-80", "final", "metrics.jsonl", "run.json"]
    # a finished run is not rerun, and a different command does not touch it
    assert main([*args, "--out", "run"]) == 1
    assert "holds a finished 80-step run" in capsys.readouterr().err


def test_ligo_grow_killed_and_rerun_equals_an_uninterrupted_run(work, capsys, monkeypatch):
    args = ["grow", "small", "--method", "ligo", "--hidden", "64", "--layers", "3", *COMMON, "--data", "text.txt",
            "--steps", "80", "--checkpoint-every", "5", "--seed", "3"]
    monkeypatch.chdir(work)
    assert main([*args[:2], "ref-big", *args[2:]]) == 0
    reference = capsys.readouterr().out
    seed = _kill_mid_run([*args[:2], "big", *args[2:]], work, "big.partial/fit-*.safetensors", every=5)
    assert not (work / "big").exists()  # the output appears only when whole
    assert main([*args[:2], "big", *args[2:]]) == 0
    resumed = capsys.readouterr()
    assert "resuming the fit from step" in resumed.err, f"GROWKIT_KILL_SEED={seed}"
    assert resumed.out.replace("big", "ref-big").replace("ref-ref-big", "ref-big") == reference
    _assert_same_weights(work / "ref-big", work / "big")
    assert not (work / "big.partial").exists()  # checkpoints are removed once the model is written


def test_train_on_a_tokens_folder_killed_and_rerun_equals_an_uninterrupted_run(work, capsys, monkeypatch):
    """Streamed batches depend on (seed, step) only, so a resumed run continues the same data order bit-exactly."""
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB), work / "small-bpe", train_bpe(embedded_text(60_000), VOCAB))
    tokenize_corpus(work / "text.txt", work / "small-bpe", work / "tokens", eval_fraction=0.1)
    args = ["train", "small-bpe", *COMMON, "--data", "tokens", "--steps", "60", "--eval-every", "10",
            "--checkpoint-every", "5", "--no-progress"]
    monkeypatch.chdir(work)
    assert main([*args, "--out", "tokens-ref"]) == 0
    seed = _kill_mid_run([*args, "--out", "tokens-run"], work, "tokens-run/checkpoint-*", every=5)
    capsys.readouterr()
    assert main([*args, "--out", "tokens-run"]) == 0
    assert "resuming from step" in capsys.readouterr().err, f"GROWKIT_KILL_SEED={seed}"
    _assert_same_weights(work / "tokens-ref" / "final", work / "tokens-run" / "final")
    assert _metrics(work / "tokens-ref") == _metrics(work / "tokens-run"), f"GROWKIT_KILL_SEED={seed}"


def test_a_different_command_does_not_resume_another_runs_checkpoint(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    args = ["train", "small", *COMMON, "--data", "text.txt", "--steps", "4", "--checkpoint-every", "2", "--no-progress"]
    (work / "other").mkdir()
    (work / "other" / "run.json").write_text(json.dumps({"command": "train", "settings": {"lr": 5.0}}))
    assert main([*args, "--out", "other"]) == 1
    err = capsys.readouterr().err
    assert "holds a checkpoint of a different training run" in err and "Traceback" not in err
    assert sorted(p.name for p in (work / "other").iterdir()) == ["run.json"]


def test_bert_data_position_is_restored_exactly():
    """Skipping N batches leaves the stream (shuffles and MLM masks) where a stream that yielded them is."""
    text = embedded_text(20_000)
    from growkit.data.tokenizer import train_bpe as bpe

    data = build_task_data("bert", text=text, tokenizer=bpe(text, 300), seq_len=16, batch_size=8, eval_batches=1)
    per_epoch = data.num_train // data.batch_size
    stream = data.train_batches(5)
    batches = [next(stream) for _ in range(2 * per_epoch + 3)]
    for start in (0, 1, per_epoch, per_epoch + 2, 2 * per_epoch + 1):
        skipped = data.train_batches(5, start=start)
        for expected in batches[start:]:
            got = next(skipped)
            assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_gpt2_data_position_skips_whole_epochs():
    text = embedded_text(20_000)
    data = build_task_data("gpt2", text=text, tokenizer=train_bpe(text, 300), seq_len=16, batch_size=8, eval_batches=1)
    per_epoch = data.num_train // data.batch_size
    stream = data.train_batches(1)
    batches = [next(stream) for _ in range(3 * per_epoch + 2)]
    for start in (per_epoch - 1, 3 * per_epoch, 3 * per_epoch + 1):
        assert torch.equal(next(data.train_batches(1, start=start))["input_ids"], batches[start]["input_ids"])


def test_state_files_round_trip_without_pickle(tmp_path):
    import numpy as np

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), betas=(0.8, 0.9))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "ints": {3: [1, 2.5, None, True]}, "nan": float("nan")}
    path = save_state(tmp_path / "state.safetensors", state)
    back = load_state(path)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert all(torch.equal(back["optimizer"]["state"][0][k], v) for k, v in state["optimizer"]["state"][0].items())
    assert back["python"] == state["python"] and back["ints"] == {3: [1, 2.5, None, True]}
    assert np.array_equal(back["numpy"][1], state["numpy"][1]) and back["numpy"][0] == "MT19937"
    assert torch.equal(back["torch"], state["torch"])
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]  # no temporary file left
    path.write_bytes(path.read_bytes()[:-10])  # a truncated state is refused, not half-loaded
    with pytest.raises(Exception, match="cannot read the checkpoint state"):
        load_state(path)


@pytest.mark.parametrize("method", ["ligo", "mango"])
def test_same_seed_same_grown_weights_for_learned_methods(method):
    """Fixed methods are checked in test_fixed_ops.py; a learned method's fit is deterministic too."""
    import growkit
    from growkit.fit import FitConfig
    from growkit.ops import METHODS, get_method

    get_method("ligo")  # registers the learned methods that exist
    if method not in METHODS:
        pytest.skip(f"{method} is not registered")
    text = embedded_text(20_000)
    data = build_task_data("gpt2", text=text, tokenizer=train_bpe(text, 300), seq_len=16, batch_size=4, eval_batches=1)
    src = tiny_model("gpt2", vocab_size=300)
    target = {"hidden_size": 64, "num_hidden_layers": 3}

    def grown(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(1234 + seed)  # the caller's RNG must not matter
        model = growkit.grow(src, target, method=method, seed=seed, data=data,
                             fit_config=FitConfig(steps=3, progress=False))
        return model.state_dict()

    a, b, c = grown(7), grown(7), grown(8)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_an_interrupted_save_leaves_the_old_model_or_nothing(tmp_path, monkeypatch):
    import growkit.io as gio

    def crash(folder):
        raise KeyboardInterrupt  # a kill in the middle of writing

    model = tiny_model("gpt2")
    monkeypatch.setattr(gio, "fsync_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        gio.save_pretrained(model, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # no folder, and no temporary left
    monkeypatch.undo()
    gio.save_pretrained(model, tmp_path / "old")
    before = (tmp_path / "old" / "model.safetensors").read_bytes()
    monkeypatch.setattr(gio, "fsync_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        gio.save_pretrained(tiny_model("gpt2", seed=1), tmp_path / "old", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (tmp_path / "old" / "model.safetensors").read_bytes() == before


def test_python_grow_claims_its_checkpoint_folder(tmp_path, capsys):
    """``grow(checkpoint_dir=...)`` records its run, refuses another run's checkpoints and a folder in use."""
    from growkit.resumable.folder import run_lock

    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": ids, "labels": ids}]
    folder = tmp_path / "fit"

    def grow_it(seed: int = 0):
        return growkit.grow(tiny_model("gpt2"), {"hidden_size": 64}, "ligo", data=data, steps=2, seed=seed,
                            checkpoint_dir=folder, checkpoint_every=1)

    first = grow_it()
    assert json.loads((folder / "run.json").read_text())["method"] == "ligo"
    again = grow_it()  # the same run resumes from its step-1 checkpoint and ends the same
    assert "resuming the fit from step 1" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    with pytest.raises(GrowError, match="holds a checkpoint of a different fit"):
        grow_it(seed=1)
    with run_lock(folder), pytest.raises(GrowError, match="in use by another growkit process"):
        grow_it()
