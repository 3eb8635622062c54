"""Device and dtype policy, data sharding, and 2-process runs (torchrun, gloo) that equal one process's."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growkit import device as gk_device
from growkit import distributed
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_model
from growkit.resumable.state import load_state
from growkit.cli import main
from growkit.core.errors import GrowError
from growkit.data import embedded_text, tokenize_corpus, train_bpe
from growkit.device import attn_implementation, autocast_context, precision, resolve_device
from growkit.io import STATE_FILE, save_pretrained
from growkit.ops import get_method
from growkit.train import TrainConfig

VOCAB = 512


# --- device selection and dtype policy ------------------------------------------------


def test_device_selection(monkeypatch):
    monkeypatch.setattr(gk_device, "_cuda_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")  # no GPU: auto is the CPU
    for name in ("cuda", "cuda:0"):
        with pytest.raises(GrowError, match="asks for a GPU"):
            resolve_device(name)
    with pytest.raises(GrowError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(GrowError, match="asks for a GPU"):
        TrainConfig(device="cuda").check()  # refused before any work
    # with a GPU, auto means CUDA, and under a launcher each process takes its LOCAL_RANK's GPU
    monkeypatch.setattr(gk_device, "_cuda_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_error(tmp_path, capsys):
    code = main(["train", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 1 and "asks for a GPU" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_dtype_policy(monkeypatch):
    cpu = precision("cpu")
    assert (cpu.autocast, cpu.dtype, cpu.mixed_precision) == (False, torch.float32, "no")
    assert precision(torch.device("cpu")) == cpu
    with autocast_context("cpu"):  # CPU: fp32, no autocast region at all
        assert not torch.is_autocast_enabled("cpu")
        assert torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(gk_device, "_cuda_available", lambda: False)  # the policy a bf16 GPU gets, asked without one
    for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
        cuda = precision(device)
        assert (cuda.device_type, cuda.autocast, cuda.dtype, cuda.mixed_precision) == ("cuda", True, torch.bfloat16, "bf16")
    assert attn_implementation("cuda") == "sdpa" and attn_implementation(torch.device("cuda", 0)) == "sdpa"
    assert attn_implementation("cpu") is None  # the CPU keeps the model's own (sdpa in transformers 5)


@pytest.mark.parametrize("method,options", [("ligo", {}), ("mango", {"rank": 2})])
def test_operator_forward_stays_fp32_under_autocast(method, options):
    source = tiny_model("gpt2")
    adapter = adapter_for(source)
    target = adapter.dims(adapter.target_config(source.config, {"hidden_size": 48, "num_hidden_layers": 3}))
    operator = get_method(method).build(adapter.to_canonical(source), target, seed=0, **options)
    expected = {k: v.detach() for k, v in operator().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.ones(4, 4).mm(torch.ones(4, 4)).dtype == torch.bfloat16  # the region is live
        out = operator()
        assert torch.ones(4, 4).mm(torch.ones(4, 4)).dtype == torch.bfloat16  # and restored after the operator
        loss = sum(t.float().square().sum() for t in out.values())
    assert all(t.dtype == torch.float32 for t in out.values())
    assert all(torch.equal(out[k].detach(), expected[k]) for k in expected)  # computed in fp32, not rounded
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in operator.parameters() if p.requires_grad)


# --- sharding: the weighted losses of the blocks are the global batch's loss -----------------


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_weighted_shards_give_the_global_loss_and_gradient(family):
    torch.manual_seed(0)
    model = tiny_model(family)
    model.train()
    ids = torch.randint(5, 64, (5, 12))
    labels = ids.clone()
    causal = family == "gpt2"
    if causal:
        labels[1, 4:] = -100  # padding-like: rows with different numbers of predicted tokens
    else:  # MLM: a few masked positions, unevenly spread, and none at all in row 4
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[0, [1, 2, 3]] = keep[1, 5] = keep[2, [2, 7]] = keep[3, [0, 1, 2, 3, 4]] = True
        labels = torch.where(keep, ids, -100)
    batch = {"input_ids": ids, "labels": labels}
    full = model(**batch).loss
    full.backward()
    expected = _grads(model)
    model.zero_grad()
    for world in (2, 3):
        total, rows = 0.0, []
        for rank in range(world):
            part, weight, items = distributed.shard(batch, causal, rank, world)
            rows += part["input_ids"].tolist()
            loss = distributed.weighted_loss(model(**part), weight, items)
            loss.backward()
            total += loss.item()
        assert rows == ids.tolist()  # contiguous blocks, in order, covering the batch once
        assert total == pytest.approx(full.item(), rel=1e-6)
        got = _grads(model)
        model.zero_grad()
        assert got.keys() == expected.keys()
        for name, g in expected.items():
            torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)
    if not causal:  # world 5: row 4 has no masked token; its block adds an exact zero, not NaN
        part, weight, items = distributed.shard(batch, causal, 4, 5)
        assert items == 0 and weight == 0.0
        assert distributed.weighted_loss(model(**part), weight, items).item() == 0.0


def test_single_process_helpers_are_no_ops():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.on_main(lambda x: x + 1, 1) == 2 and distributed.main_first(lambda: 3) == 3
    assert distributed.gather_objects("a") == ["a"] and distributed.all_true(True)
    distributed.check_same("x", "anything")
    distributed.barrier()
    with pytest.raises(GrowError, match="need labels"):
        distributed.loss_items({"input_ids": torch.zeros(2, 3)}, causal=True)


# --- two processes (torchrun, gloo) equal one process -------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(argv: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for attempt in range(2):  # a port taken between choosing and binding it: try another once
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "growkit", *argv]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower() or attempt:
            break
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _assert_close_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    worst = max((ta[k] - tb[k]).abs().max().item() for k in ta)
    assert worst <= atol, f"max weight difference {worst:.3g} > {atol}"


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path, capsys):
    """``torchrun --nproc_per_node 2 -m growkit`` grow (LiGO fit) and train equal the single-process commands.

    Same global batch (4 rows: 2 per process), fp32, gloo: the grown model (the
    fitted operator's materialisation) and the trained model agree within 1e-5,
    the losses within fp32 rounding, the FLOPs exactly; only rank 0 wrote.
    """
    start = time.perf_counter()
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB), tmp_path / "small")
    (tmp_path / "text.txt").write_text(embedded_text(30_000), encoding="utf-8")
    data = ["--data", "text.txt", "--seq-len", "16", "--batch-size", "4", "--seed", "0"]
    grow = ["grow", "small", "{out}", "--method", "ligo", "--layers", "3", "--hidden", "48", "--steps", "3",
            "--checkpoint-every", "2", *data]
    train = ["train", "grown1", "--out", "{out}", "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2",
             "--keep-checkpoints", "0", "--no-progress", *data]

    def argv(template: list[str], out: str) -> list[str]:
        return [a.replace("{out}", out) for a in template]

    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(argv(grow, "grown1")) == 0
        assert main(argv(train, "trained1")) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    _torchrun(argv(grow, "grown2"), tmp_path)
    _torchrun(argv(train, "trained2"), tmp_path)

    _assert_close_weights(tmp_path / "grown1", tmp_path / "grown2")
    assert not (tmp_path / "grown2.partial").exists()  # the fit's checkpoints were removed once the model was written
    _assert_close_weights(tmp_path / "trained1" / "final", tmp_path / "trained2" / "final")
    one, two = _metrics(tmp_path / "trained1"), _metrics(tmp_path / "trained2")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1, 2, 3, 4]  # one writer: no duplicate lines
    for a, b in zip(one, two):
        assert b["flops"] == a["flops"]  # counted for the global batch
        for key in ("loss", "eval_loss", "lr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    names = sorted(p.name for p in (tmp_path / "trained2").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "trained1").iterdir()) == [
        "checkpoint-2", "checkpoint-4", "final", "metrics.jsonl", "run.json"]
    assert json.loads((tmp_path / "trained2" / "run.json").read_text()) == json.loads((tmp_path / "trained1" / "run.json").read_text())
    assert "saved to" in out

    # a 2-process run killed after its checkpoint resumes under 2 processes to the same end
    shutil.rmtree(tmp_path / "trained2" / "final")
    shutil.rmtree(tmp_path / "trained2" / "checkpoint-4")
    _torchrun(argv(train, "trained2"), tmp_path)
    _assert_close_weights(tmp_path / "trained1" / "final", tmp_path / "trained2" / "final")
    assert [r["step"] for r in _metrics(tmp_path / "trained2")] == [0, 1, 2, 3, 4]
    state = load_state(tmp_path / "trained2" / "checkpoint-2" / STATE_FILE)
    assert len(state["rng_ranks"]) == 2  # every process's RNG, for an exact resume with dropout
    assert time.perf_counter() - start < 240


def test_two_processes_match_one_on_a_tokens_folder(tmp_path, capsys):
    """A tokens folder streamed by 2 processes (each drawing the global batch at the step's seeded offsets) trains
    the same model as one process, within 1e-5, and both runs name the data by the same index digest."""
    tokenizer = train_bpe(embedded_text(100_000), VOCAB)
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB), tmp_path / "small", tokenizer)
    (tmp_path / "text.txt").write_text(embedded_text(60_000), encoding="utf-8")
    tokenize_corpus(tmp_path / "text.txt", tmp_path / "small", tmp_path / "tokens", eval_fraction=0.1)
    train = ["train", "small", "--data", "tokens", "--seq-len", "16", "--batch-size", "4", "--steps", "4",
             "--eval-every", "2", "--checkpoint-every", "2", "--no-progress", "--out"]
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main([*train, "one"]) == 0
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    _torchrun([*train, "two"], tmp_path)
    _assert_close_weights(tmp_path / "one" / "final", tmp_path / "two" / "final")
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in ("loss", "eval_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert json.loads((tmp_path / "two" / "run.json").read_text()) == json.loads((tmp_path / "one" / "run.json").read_text())
