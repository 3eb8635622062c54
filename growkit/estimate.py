"""Estimates before any allocation: parameters, peak memory and FLOPs of a run, from configs alone.

Models are only ever built on the meta device here (shapes, no storage), and
for sizes too large even for that an analytic count stands in, so asking about
an absurd model costs nothing. The memory figure is a rough upper estimate of
the peak (weights, gradients, AdamW's two moments and the activations one
batch keeps for the backward pass), meant to refuse what cannot fit before a
run allocates it, not to budget to the last megabyte.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from transformers import PretrainedConfig

from .arch import adapter_for
from .core.errors import GrowError
from .flops import count_flops, train_flops_per_token
from .io import model_class

FLOAT = 4  #: bytes per fp32 number
#: above this many parameters a model is not even built on the meta device (its storage size overflows)
META_LIMIT = 10**12
SKIP_ENV = "GROWKIT_SKIP_MEMORY_CHECK"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def human_count(n: float) -> str:
    return f"{n:,.0f}" if n < 1e12 else f"{n:.3g}"


def analytic_parameters(config: PretrainedConfig) -> int:
    """Parameters of the model ``config`` describes, from its sizes (matrices, embeddings, heads; ~exact)."""
    adapter = adapter_for(config)
    d = adapter.dims(config)
    q, k = d.heads * d.head_dim, d.kv_heads * d.head_dim
    mlp_inputs = 2 if adapter.gated_mlp else 1
    per_layer = d.hidden * (q + 2 * k) + q * d.hidden + (mlp_inputs + 1) * d.hidden * d.ffn + 4 * d.hidden + d.ffn
    total = d.layers * per_layer + 2 * d.hidden + adapter.edge_parameters(config, d)
    return int(total)


def _meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The model ``config`` describes, on the meta device: shapes without storage."""
    with torch.device("meta"):
        return model_class(config)(config)


def _meta_count(config: PretrainedConfig) -> int:
    return sum(p.numel() for p in _meta_model(config).parameters())


def parameter_count(config: PretrainedConfig) -> int:
    """Exact parameters of the model ``config`` describes, counted on the meta device (no memory).

    The one parameter counter (a built model: ``sum(p.numel() for p in model.parameters())``).

    Every layer has the same parameters, so only one- and two-layer models are
    built and the count is extrapolated: any layer count costs the same. Sizes
    beyond :data:`META_LIMIT` parameters get the analytic count instead.
    """
    rough = analytic_parameters(config)
    if rough > META_LIMIT:
        return rough
    adapter = adapter_for(config)
    dims = adapter.dims(config)
    if dims.layers <= 2:
        return _meta_count(config)
    counts = []
    for layers in (1, 2):
        small = copy.deepcopy(config)
        adapter.write_dims(small, replace(dims, layers=layers))
        counts.append(_meta_count(small))
    return counts[0] + (dims.layers - 1) * (counts[1] - counts[0])


def positions_per_example(config: PretrainedConfig, seq_len: int) -> int:
    """Token positions one example occupies (ViT: patches + CLS)."""
    return adapter_for(config).positions(config, seq_len)


def activation_numbers(config: PretrainedConfig, batch_size: int, seq_len: int) -> int:
    """A rough count of the numbers one training step keeps for its backward pass.

    Per token and layer: about ten hidden-sized tensors (norm inputs, q/k/v,
    attention output, residuals), three or four FFN-sized ones, and the
    attention scores and probabilities (heads x sequence, twice); plus the
    logits, their softmax and their gradient at the head.
    """
    adapter = adapter_for(config)
    d = adapter.dims(config)
    seq = positions_per_example(config, seq_len)
    ffn_tensors = 4 if adapter.gated_mlp else 3
    per_token = d.layers * (10 * d.hidden + ffn_tensors * d.ffn + 2 * d.heads * seq)
    per_token += 3 * adapter.logit_width(config)
    return batch_size * seq * per_token


@dataclass
class Estimate:
    """What a run will hold and compute: parameters, peak memory by part (bytes) and FLOPs."""

    what: str
    target_params: int
    memory: dict[str, int] = field(default_factory=dict)
    flops_per_token: float = 0.0
    tokens_per_step: int = 0
    steps: int = 0
    step_extra_flops: float = 0.0  #: FLOPs per step beyond the target's (materialising an operator)
    source_params: int | None = None
    operator_params: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak_memory(self) -> int:
        return sum(self.memory.values())

    @property
    def run_flops(self) -> float:
        return self.steps * (self.flops_per_token * self.tokens_per_step + self.step_extra_flops)

    def lines(self) -> list[str]:
        rows = []
        if self.source_params is not None:
            rows.append(("source parameters", human_count(self.source_params)))
        rows.append(("model parameters" if self.what == "training" else "target parameters", human_count(self.target_params)))
        if self.operator_params is not None:
            rows.append(("operator parameters", human_count(self.operator_params)))
        parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in self.memory.items() if v)
        rows.append(("peak memory (estimate)", f"{human_bytes(self.peak_memory)} ({parts})"))
        if self.flops_per_token:
            rows.append(("train FLOPs per token", human_count(self.flops_per_token)))
        if self.steps:
            detail = f"{self.steps} steps x {self.tokens_per_step:,} tokens"
            if self.step_extra_flops:
                detail += f" + operator {human_count(self.step_extra_flops)} per step"
            rows.append((f"{self.what} FLOPs", f"{self.run_flops:.3g} ({detail})"))
        out = [f"{k:<24} {v}" for k, v in rows]
        out += [f"{'note':<24} {n}" for n in self.notes]
        return out


def train_estimate(config: PretrainedConfig, batch_size: int, seq_len: int, steps: int) -> Estimate:
    """A training run of the model ``config`` describes: weights, gradients, AdamW moments, activations."""
    p = parameter_count(config)
    seq = positions_per_example(config, seq_len)
    return Estimate(
        "training", p,
        memory={"weights": FLOAT * p, "gradients": FLOAT * p, "AdamW state": 2 * FLOAT * p,
                "activations": FLOAT * activation_numbers(config, batch_size, seq_len)},
        flops_per_token=train_flops_per_token(config, seq), tokens_per_step=batch_size * seq, steps=steps,
    )


def _meta_source(config: PretrainedConfig):
    return adapter_for(config).to_canonical(_meta_model(config))


def operator_on_meta(method: Any, source_config: PretrainedConfig, target_config: PretrainedConfig,
                     seed: int, options: dict) -> torch.nn.Module | None:
    """The learned operator built on the meta device (None when its start cannot be computed there).

    Its parameter shapes do not depend on the start, so when the requested start
    needs real numbers (a copy map drawn with ``bincount``), the default start is tried.
    """
    source = _meta_source(source_config)
    dims = adapter_for(target_config).dims(target_config)
    attempts = [options, {k: v for k, v in options.items() if k != "init"}]
    for opts in attempts:
        try:
            with torch.device("meta"):
                return method.build(source, dims, seed=seed, **opts)
        except GrowError:
            raise
        except Exception:  # noqa: BLE001 - an op without a meta kernel: try the next start
            continue
    return None


def _operator_cost(hook: Callable[..., float] | None, source_config: PretrainedConfig,
                   target_config: PretrainedConfig, options: dict) -> float | None:
    """A method's cost hook (``parameter_count``, ``materialize_flops``), where it has one: for operators
    that cannot be built on the meta device."""
    if hook is None:
        return None
    try:
        return hook(_meta_source(source_config), adapter_for(target_config).dims(target_config), **options)
    except GrowError:
        raise
    except Exception:  # noqa: BLE001
        return None


def fit_estimate(method: Any, source_config: PretrainedConfig, target_config: PretrainedConfig, *, seed: int,
                 options: dict, batch_size: int, seq_len: int, steps: int) -> Estimate:
    """Fitting a learned operator: the target is materialised every step and trained through, the source is kept.

    Memory: the target template model, the materialised weights and the
    operator's intermediates (about two targets), their gradients, the source
    (model and the operator's frozen copy), the operator with its gradients and
    AdamW moments, and the target's activations for one batch.
    """
    p_t = parameter_count(target_config)
    p_s = parameter_count(source_config)
    est = Estimate("fit", p_t, source_params=p_s, steps=steps)
    seq = positions_per_example(target_config, seq_len)
    est.flops_per_token = train_flops_per_token(target_config, seq)
    est.tokens_per_step = batch_size * seq
    operator = None
    if FLOAT * (p_t + p_s) <= available_memory(default=1 << 62):  # an operator of an impossible target is not built
        operator = operator_on_meta(method, source_config, target_config, seed, options)
    p_op = 0
    if operator is None:
        counted = _operator_cost(method.parameter_count, source_config, target_config, options)
        if counted is None:
            est.notes.append("the operator cannot be built on the meta device: its parameters and FLOPs are not counted")
        else:
            p_op = est.operator_params = int(counted)
            flops = _operator_cost(method.materialize_flops, source_config, target_config, options)
            if flops is None:
                est.notes.append("the operator's materialisation FLOPs are not counted (it cannot be built on the meta device)")
            else:  # materialising once forward, and its backward (about twice that)
                est.step_extra_flops = 3 * float(flops)
    else:
        p_op = est.operator_params = sum(p.numel() for p in operator.parameters())
        try:  # materialising once forward, and its backward (about twice that)
            est.step_extra_flops = 3 * count_flops(lambda: operator())
        except Exception:  # noqa: BLE001
            est.notes.append("the operator's materialisation FLOPs could not be counted on the meta device")
    est.memory = {
        "target (template, materialised, intermediates)": 3 * FLOAT * p_t,
        "target gradients": FLOAT * p_t,
        "source (model + frozen copy)": 2 * FLOAT * p_s,
        "operator + grads + AdamW": 4 * FLOAT * p_op,
        "activations": FLOAT * activation_numbers(target_config, batch_size, seq_len),
    }
    return est


def fixed_estimate(source_config: PretrainedConfig, target_config: PretrainedConfig, seq_len: int) -> Estimate:
    """A fixed operator: the source (model and canonical view) and the target (canonical view and model)."""
    p_t, p_s = parameter_count(target_config), parameter_count(source_config)
    seq = positions_per_example(target_config, seq_len)
    return Estimate(
        "growth", p_t, source_params=p_s,
        memory={"source (model + canonical)": 2 * FLOAT * p_s, "target (canonical + model + copies)": 3 * FLOAT * p_t},
        flops_per_token=train_flops_per_token(target_config, seq),
    )


def available_memory(device: str = "cpu", default: int | None = None) -> int | None:
    """Bytes free for a new allocation: MemAvailable from /proc/meminfo (or psutil), or the GPU's free memory."""
    if device != "cpu" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return default


def check_memory(est: Estimate, device: str = "cpu") -> None:
    """Refuse, before allocating anything, a run whose peak memory estimate exceeds the free memory."""
    if os.environ.get(SKIP_ENV):
        return
    free = available_memory(device)
    if free is None or est.peak_memory <= free:
        return
    parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in est.memory.items() if v)
    raise GrowError(
        f"the {est.what} needs about {human_bytes(est.peak_memory)} of memory ({parts}) for a "
        f"{human_count(est.target_params)}-parameter {'model' if est.what == 'training' else 'target'}, "
        f"but only {human_bytes(free)} is free; "
        f"choose smaller sizes or batches (--dry-run shows the estimate; {SKIP_ENV}=1 skips this check)"
    )
