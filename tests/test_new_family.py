"""A new family is one adapter file plus one registry line (tests/toy_family.py).

Grow, train, FLOP counting, ``--dry-run`` and a 2-process run all work for it,
with the Llama-like defaults the base adapter states: a missed fact would show
as a wrong FLOP count, an inexact growth or 2-process weights that drift.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_family import TOY, ToyForCausalLM, register

from growkit import grow
from growkit.arch import ADAPTERS, adapter_for
from growkit.arch.tiny import tiny_model
from growkit.cli import main
from growkit.data import build_task_data, embedded_text
from growkit.flops import flops_per_batch, measure_flops
from growkit.io import load_pretrained, save_pretrained

LAUNCH = Path(__file__).resolve().parent / "toy_launch.py"
VOCAB = 512


@pytest.fixture(autouse=True)
def toy_family():
    """The family is known during each test only, so other tests see the built-in families alone."""
    register()
    yield
    del ADAPTERS[TOY]


def test_grow_is_exact_and_a_learned_method_fits():
    source = tiny_model(TOY, vocab_size=VOCAB)
    assert isinstance(source, ToyForCausalLM) and adapter_for(source).family == TOY
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    grown = grow(source, {"hidden_size": 64, "num_hidden_layers": 3, "intermediate_size": 128}, "exact", noise=0.0)
    assert isinstance(grown, ToyForCausalLM)
    with torch.no_grad():
        diff = (grown(input_ids=ids).logits - source(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-5
    data = build_task_data(TOY, text=embedded_text(20_000), config=source.config, seq_len=16, batch_size=4)
    grown, result = grow(source, {"hidden_size": 64}, "mango", data=data.train_batches(0), steps=2,
                         return_fit=True)
    assert isinstance(grown, ToyForCausalLM) and len(result.losses) == 2


def test_flop_count_matches_the_measured_step():
    model = tiny_model(TOY, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       intermediate_size=344, vocab_size=VOCAB, max_position_embeddings=64)
    ids = torch.randint(5, VOCAB, (2, 64))
    batch = {"input_ids": ids, "labels": ids}
    measured, analytic = measure_flops(model, batch), flops_per_batch(model.config, batch)
    assert abs(measured / analytic - 1) < 0.10, (measured, analytic)  # the gate projection is counted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("family", [TOY, "phi3"])  # phi3: fused weights, cut and joined in every process
def test_cli_dry_run_grow_train_and_two_processes(family, tmp_path, capsys):
    source = tiny_model(family, vocab_size=VOCAB)
    save_pretrained(source, tmp_path / "small")
    (tmp_path / "text.txt").write_text(embedded_text(30_000), encoding="utf-8")
    grow_args = ["grow", str(tmp_path / "small"), str(tmp_path / "grown"), "--method", "exact", "--hidden", "64",
                 "--layers", "3"]
    assert main([*grow_args, "--dry-run"]) == 0
    assert "target parameters" in capsys.readouterr().out and not (tmp_path / "grown").exists()
    assert main(grow_args) == 0
    assert type(load_pretrained(tmp_path / "grown")) is type(source)
    train = ["train", str(tmp_path / "grown"), "--steps", "3", "--eval-every", "3", "--checkpoint-every", "0",
             "--data", str(tmp_path / "text.txt"), "--seq-len", "16", "--batch-size", "4", "--no-progress"]
    assert main([*train, "--out", str(tmp_path / "one"), "--dry-run"]) == 0
    assert "train FLOPs per token" in capsys.readouterr().out and not (tmp_path / "one").exists()
    assert main([*train, "--out", str(tmp_path / "one")]) == 0

    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(LAUNCH), *train, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert one.keys() == two.keys()
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5  # causal loss weights, as one process
