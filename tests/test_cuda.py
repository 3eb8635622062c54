"""The CUDA path: device selection, bf16 autocast, fp32 operators, a fit and a `growkit train` on a GPU.

Every test here needs a GPU and is skipped without one (CI has none);
``benchmarks/gpu_check.sh`` runs this file first when a GPU is lent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import growkit
from growkit.arch import adapter_for
from growkit.arch.tiny import tiny_model
from growkit.device import autocast_context, precision, resolve_device
from growkit.fit import FitConfig
from growkit.ops import get_method

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[1]
DOUBLE = {"hidden_size": 64, "num_hidden_layers": 4}


def _batches(model, count: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (count, 8, 16), generator=gen)
    return [{"input_ids": x, "labels": x} for x in ids]


def test_auto_picks_the_gpu_and_bf16():
    device = resolve_device("auto")
    assert device.type == "cuda"
    policy = precision(device)
    assert policy.autocast == torch.cuda.is_bf16_supported()
    if policy.autocast:
        assert (policy.dtype, policy.mixed_precision) == (torch.bfloat16, "bf16")


def test_autocast_forward_runs_in_bf16_and_stays_close_to_fp32():
    model = tiny_model("gpt2").cuda()
    ids = torch.randint(3, model.config.vocab_size, (2, 16), device="cuda")
    seen = []
    hook = model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        full = model(input_ids=ids).logits.float()
        with autocast_context("cuda"):
            half = model(input_ids=ids).logits.float()
    hook.remove()
    assert seen[1] == (torch.bfloat16 if precision("cuda").autocast else torch.float32)
    assert torch.allclose(half, full, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("method", ["ligo", "mango"])
def test_operators_compute_in_fp32_under_autocast(method):
    """A learned operator's weights are fp32 and equal its CPU materialisation, even inside autocast."""
    small = tiny_model("gpt2")
    adapter = adapter_for(small)
    dims = adapter.dims(adapter.target_config(small.config, DOUBLE))
    operator = get_method(method).build(adapter.to_canonical(small), dims, seed=0)
    on_cpu = operator.materialize().tensors
    operator.cuda()
    with autocast_context("cuda"):
        on_gpu = operator.materialize().tensors
    assert on_cpu.keys() == on_gpu.keys()
    for key, value in on_gpu.items():
        assert value.dtype == torch.float32, key
        assert torch.allclose(value.cpu(), on_cpu[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("method", ["ligo", "mango"])
def test_fit_on_the_gpu_lowers_the_loss_and_returns_a_cpu_model(method):
    small = tiny_model("gpt2")
    train = _batches(small, 1)
    grown, result = growkit.grow(small, DOUBLE, method=method, data=train, return_fit=True,
                                 fit_config=FitConfig(steps=20, progress=False, device="cuda"))
    assert all(p.device.type == "cpu" for p in grown.parameters())
    assert len(result.losses) == 20 and result.losses[-1] < result.losses[0]


def test_growkit_train_on_cuda(tmp_path):
    model = tiny_model("gpt2", n_positions=64, vocab_size=512)  # room for a byte-level BPE
    model.save_pretrained(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "growkit", "train", str(tmp_path / "model"), "--out", str(tmp_path / "run"),
         "--device", "cuda", "--steps", "30", "--batch-size", "8", "--seq-len", "32", "--eval-every", "10",
         "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in records if r.get("eval_loss") is not None]
    assert len(evals) >= 2 and evals[-1] < evals[0]
