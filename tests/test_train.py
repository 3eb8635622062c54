"""The training loop, model folders (io) and the ``growkit train`` command."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import GPT2LMHeadModel

from growkit.arch.tiny import tiny_config, tiny_model
from growkit.cli import _Parser
from growkit.cli import train as train_cmd
from growkit.core.errors import GrowError
from growkit.data import build_task_data, embedded_text, train_bpe
from growkit.flops import flops_per_batch
from growkit.io import STATE_FILE, load_pretrained, save_pretrained
from growkit.train import TrainConfig, lr_factor, train

VOCAB, SEQ = 512, 32
FAST = dict(warmup=5, lr=3e-3, progress=False)


@pytest.fixture(scope="module")
def data():
    text = embedded_text(120_000)
    return build_task_data("gpt2", text=text, tokenizer=train_bpe(text, VOCAB), seq_len=SEQ, batch_size=8, eval_batches=2)


def gpt2():
    return tiny_model("gpt2", vocab_size=VOCAB, n_embd=64)


def test_loss_falls_and_eval_is_periodic(data):
    result = train(gpt2(), data, TrainConfig(steps=30, eval_every=10, **FAST))
    evals = {r["step"]: r["eval_loss"] for r in result.history if "eval_loss" in r}
    assert list(evals) == [0, 10, 20, 30]
    assert evals[30] < evals[0] - 0.5 and result.eval_loss == evals[30]
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < losses[0] - 0.5


def test_same_seed_same_history(data):
    cfg = TrainConfig(steps=8, eval_every=4, log_every=2, **FAST)
    runs = [train(gpt2(), data, cfg).history for _ in range(2)]
    strip = [[{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in h] for h in runs]
    assert strip[0] == strip[1]
    assert [r["step"] for r in runs[0]] == [0, 2, 4, 6, 8]
    other = train(gpt2(), data, TrainConfig(steps=8, eval_every=4, log_every=2, seed=1, **FAST)).history
    assert other[-1]["loss"] != runs[0][-1]["loss"]


def test_flops_and_seconds_count_from_the_offsets(data):
    result = train(gpt2(), data, TrainConfig(steps=4, eval_every=2, **FAST), flops_offset=1e9, seconds_offset=5.0)
    per_step = flops_per_batch(gpt2().config, next(data.train_batches(0)))
    assert [r["flops"] for r in result.history] == [1e9 + per_step * s for s in (0, 1, 2, 3, 4)]
    seconds = [r["seconds"] for r in result.history]
    assert seconds[0] == 5.0 and seconds == sorted(seconds) and result.seconds == seconds[-1]
    assert all(r["tokens_per_s"] > 0 for r in result.history[1:])


def test_checkpoints_reload_with_the_same_logits(data, tmp_path):
    model = gpt2()
    result = train(model, data, TrainConfig(steps=6, eval_every=3, checkpoint_every=3, **FAST), tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-6", "final", "metrics.jsonl"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    final = result.final_dir
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert not (final / STATE_FILE).exists()  # the model alone; the resumable state is in checkpoint-6
    assert (run / "checkpoint-6" / STATE_FILE).is_file()  # optimiser, scheduler, RNG and step, for extending
    model.eval()
    ids = data.eval_batches[0]["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(GPT2LMHeadModel.from_pretrained(final)(ids).logits, expected)
        assert torch.equal(load_pretrained(final)(ids).logits, expected)
    with pytest.raises(GrowError, match="not empty"):
        train(gpt2(), data, TrainConfig(steps=1, **FAST), run)


def _curve(folder) -> list[dict]:
    """A run's metrics without the wall-clock fields."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "tokens_per_s")} for line in lines]


def test_python_train_claims_its_run_folder(data, tmp_path, capsys):
    """``train(..., resume=True)`` records its run, resumes it bit-exactly, and refuses another run's
    checkpoints (other settings, other starting weights) and a folder in use, touching nothing in it."""
    from growkit.resumable.folder import run_lock

    cfg = TrainConfig(steps=4, eval_every=2, checkpoint_every=2, **FAST)
    reference = gpt2()
    train(reference, data, cfg, tmp_path / "ref")
    run = tmp_path / "run"
    train(gpt2(), data, cfg, run, resume=True)
    assert json.loads((run / "run.json").read_text())["command"] == "train"
    for name in ("final", "checkpoint-4"):  # as if killed after its step-2 checkpoint
        shutil.rmtree(run / name)
    capsys.readouterr()
    resumed = gpt2()
    train(resumed, data, cfg, run, resume=True)
    assert "resuming from step 2" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
    assert _curve(run) == _curve(tmp_path / "ref")
    for name in ("final", "checkpoint-4"):
        shutil.rmtree(run / name)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(GrowError, match="other training settings"):
        train(gpt2(), data, TrainConfig(steps=4, eval_every=2, checkpoint_every=2, warmup=5, lr=1e-3, progress=False),
              run, resume=True)
    with pytest.raises(GrowError, match=r"holds a checkpoint of a different training run \(it differs in: model.weights\)"):
        train(tiny_model("gpt2", vocab_size=VOCAB, n_embd=64, seed=1), data, cfg, run, resume=True)
    with run_lock(run), pytest.raises(GrowError, match="in use by another growkit process"):
        train(gpt2(), data, cfg, run, resume=True)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_grad_accum_steps_on_the_global_batch_and_counts_its_flops(data, tmp_path):
    """Two accumulated batches of 4 make the step one batch of 8 makes (the same rows, within fp32 rounding)."""
    halves = build_task_data("gpt2", text=embedded_text(120_000), tokenizer=data.tokenizer, seq_len=SEQ, batch_size=4,
                             eval_batches=2)
    cfg = dict(steps=3, eval_every=0, clip=0.0, **FAST)
    whole, accumulated = gpt2(), gpt2()
    one = train(whole, data, TrainConfig(**cfg))
    two = train(accumulated, halves, TrainConfig(grad_accum=2, **cfg))
    assert two.flops == one.flops == 3 * flops_per_batch(whole.config, next(data.train_batches()))
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert [r["loss"] for r in two.history] == pytest.approx([r["loss"] for r in one.history], rel=1e-4)
    with pytest.raises(GrowError, match="grad_accum must be at least 1"):
        TrainConfig(grad_accum=0).check()


def test_tensorboard_is_refused_clearly_when_it_is_not_installed(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(GrowError, match="needs the tensorboard package, which is not installed: pip install tensorboard"):
        TrainConfig(report_to=("tensorboard",)).check()


def test_tensorboard_receives_the_metrics(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(gpt2(), data, TrainConfig(steps=3, eval_every=0, report_to=("tensorboard",), **FAST), tmp_path / "run")
    logs = tmp_path / "run" / "tensorboard"
    events = EventAccumulator(str(logs)).Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.1)
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(100) == pytest.approx(0.1)
    assert f(55) == pytest.approx(0.55)  # cosine half way
    linear = lr_factor(TrainConfig(steps=100, warmup=0, schedule="linear", min_lr_ratio=0.0))
    assert linear(50) == pytest.approx(0.5)
    with pytest.raises(GrowError, match="unknown schedule"):
        TrainConfig(schedule="step").check()


def test_a_faster_decay_reaches_the_floor_early_and_holds_it():
    """decay_fraction 0.5 packs the same cosine into the first half of the steps; 1 is the plain schedule."""
    plain, fast = lr_factor(TrainConfig(steps=100, warmup=10)), lr_factor(TrainConfig(steps=100, warmup=10, decay_fraction=0.5))
    assert [fast(s) for s in range(10)] == [plain(s) for s in range(10)]  # the warm-up is untouched
    assert fast(30) == pytest.approx(0.55)  # half way through the decay at step 10 + 40/2
    assert all(fast(s) == pytest.approx(0.1) for s in (50, 51, 75, 99))
    assert plain(50) > 0.6 and plain(99) == pytest.approx(0.1, abs=1e-3)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(GrowError, match="decay_fraction"):
            TrainConfig(decay_fraction=bad).check()


def test_divergence_stops_the_run(data, tmp_path):
    model = gpt2()
    with torch.no_grad():
        model.transformer.wte.weight.fill_(math.nan)
    result = train(model, data, TrainConfig(steps=5, eval_every=0, **FAST), tmp_path / "run")
    assert result.diverged_at == 1 and result.final_dir is None


# --- io -----------------------------------------------------------------------


def test_io_refusals(tmp_path):
    model = tiny_model("gpt2")
    with pytest.raises(GrowError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GrowError, match="no config.json"):
        load_pretrained(tmp_path / "empty")
    folder = save_pretrained(model, tmp_path / "m")
    with pytest.raises(GrowError, match="not empty"):
        save_pretrained(model, folder)
    save_pretrained(model, folder, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GrowError, match="cannot load the weights"):
        load_pretrained(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(GrowError, match="convert them to model.safetensors"):
        load_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(GrowError, match="unsupported model type 't5'"):
        load_pretrained(folder)


# --- the command ----------------------------------------------------------------


def _cli(*argv: str) -> int:
    parser = _Parser(prog="growkit")
    train_cmd.add_parser(parser.add_subparsers(dest="command", parser_class=_Parser))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def test_train_command(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(embedded_text(40_000), encoding="utf-8")
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB), tmp_path / "small")
    common = ["--steps", "3", "--seq-len", "16", "--batch-size", "4", "--no-progress", "--data", str(text)]
    assert _cli(str(tmp_path / "small"), "--out", str(tmp_path / "a"), *common) == 0
    assert "model saved to" in capsys.readouterr().out
    final = tmp_path / "a" / "final"
    assert (final / "tokenizer.json").is_file()  # the BPE trained on the data travels with the model
    assert _cli(str(final), "--out", str(tmp_path / "b"), *common) == 0  # and is reused from there
    save_pretrained(tiny_model("gpt2", head=False), tmp_path / "headless")
    with pytest.raises(GrowError, match="no head"):
        _cli(str(tmp_path / "headless"), "--out", str(tmp_path / "c"), *common)
    with pytest.raises(GrowError, match="contains the source folder"):
        _cli(str(final), "--out", str(tmp_path / "a"), *common)
    with pytest.raises(GrowError, match="holds a finished 3-step run; choose a new folder, or pass a --steps larger"):
        _cli(str(final), "--out", str(tmp_path / "b"), *common)
