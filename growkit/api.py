"""The one-call public API: ``grow(model, target, method=...)``."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from . import distributed
from .arch import adapter_for
from .core.errors import GrowError
from .data import data_digest
from .fit import FitConfig, FitResult, fit, fit_settings, latest_fit_checkpoint
from .ops import choose_width, get_method, grow_fixed, methods
from .resumable.folder import claim, digest_tensors

__all__ = ["grow", "methods", "resolve_target"]

#: the arguments of :func:`grow` that only a learned method's fit uses
FIT_ARGUMENTS = ("data", "steps", "fit_config", "checkpoint_dir", "checkpoint_every")


def resolve_target(model: PreTrainedModel, target: PretrainedConfig | dict[str, int]) -> PretrainedConfig:
    """The target config: a config of the same model type, or the source's at the given sizes."""
    adapter = adapter_for(model)
    if isinstance(target, PretrainedConfig):
        if target.model_type != model.config.model_type:
            raise GrowError(f"target is a {target.model_type} config but the model is {model.config.model_type}")
        adapter.dims(model.config).check_growth_to(adapter.dims(target))
        return target
    if not isinstance(target, dict):
        raise GrowError("target must be a config or a dict of sizes such as {'hidden_size': 256}")
    return adapter.target_config(model.config, target)


def grow(
    model: PreTrainedModel,
    target: PretrainedConfig | dict[str, int],
    method: str = "exact",
    *,
    width: str | None = None,
    depth: str | None = None,
    seed: int = 0,
    data: Any = None,
    steps: int | None = None,
    fit_config: FitConfig | None = None,
    return_fit: bool = False,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    **options: Any,
) -> PreTrainedModel | tuple[PreTrainedModel, FitResult]:
    """Grow ``model`` into a model of the same class at ``target``'s sizes.

    Fixed methods may swap either half with ``width=`` / ``depth=``; ``exact``
    zero-extends the width where a growth factor is not whole (RMSNorm models;
    see :func:`growkit.ops.choose_width`). Learned
    methods (``ligo``, ``mango``) fit for ``steps`` steps on ``data`` (batches with
    labels); each method has its own default (ligo 100; mango 0: it returns its
    function-preserving start and needs no data). ``return_fit=True`` also returns
    their :class:`FitResult`.
    An argument the method would ignore (``data=`` for a fixed method, ``rank=``
    for ligo) is refused.
    With ``checkpoint_dir`` and ``checkpoint_every`` the fit checkpoints there and
    resumes from the newest checkpoint it finds (see :func:`growkit.fit.fit`); the
    folder is locked while the fit runs and records what the run is (source,
    data, method, sizes, options, settings), so another run's checkpoints are refused.
    The source model is never modified.
    """
    adapter = adapter_for(model)
    spec = get_method(method)
    given = {"width": width, "depth": depth, "data": data, "steps": steps, "fit_config": fit_config,
             "checkpoint_dir": checkpoint_dir, "checkpoint_every": checkpoint_every or None, **options}
    spec.check_options({name: value for name, value in given.items() if value is not None},
                       FIT_ARGUMENTS if spec.learned else ("width", "depth"))
    config = resolve_target(model, target)
    tgt_dims = adapter.dims(config)
    if not spec.learned:
        width = choose_width(spec, adapter.dims(model.config), tgt_dims, family=adapter.family,
                             rms_norm=adapter.rms_norm_eps(model.config) is not None, width=width)
    source = adapter.to_canonical(model)
    model_class = type(model)
    if not spec.learned:
        canon = grow_fixed(source, tgt_dims, width, depth or spec.depth, seed=seed, **options)
        return adapter.from_canonical(canon, config, model_class)
    if fit_config is None:
        if data is not None and steps is None and not spec.fit_steps:  # data given, so a fit was likely meant
            raise GrowError(f"{method} by default takes its start and fits nothing, so data= would be ignored; "
                            "pass steps=N to fit (or steps=0 to take the start anyway)")
        fit_config = FitConfig(steps=spec.fit_steps if steps is None else steps, lr=spec.fit_lr)
    if data is None and fit_config.steps:
        raise GrowError(
            f"{method} is fit on the target's loss and needs data: pass data= (an iterable of batch dicts "
            "with labels), or --data PATH on the command line"
        )
    operator = spec.build(source, tgt_dims, seed=seed, **options)
    model = model_class(adapter.grown_config(config, operator.target_facts()))  # the fit's function, then the grown model
    if not fit_config.steps:  # the operator's start, materialised: nothing to fit, checkpoint or claim
        grown = adapter.load_canonical(model, operator.materialize())
        return (grown, FitResult(operator)) if return_fit else grown
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is not None:
            run = {"command": "grow", "source": digest_tensors(source.tensors), "data": data_digest(data),
                   "method": spec.name, "target": asdict(tgt_dims), "options": options,
                   "fit": fit_settings(fit_config, seed)}
            _claim_checkpoints(stack, Path(checkpoint_dir), run)
        result = fit(operator, model, adapter, data, fit_config, seed=seed,
                     checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
    grown = adapter.load_canonical(model, operator.materialize())
    return (grown, result) if return_fit else grown


def _claim_checkpoints(stack: contextlib.ExitStack, folder: Path, run: dict) -> None:
    """Every process agrees on ``run``; rank 0 claims ``folder`` (lock and identity) for the stack's life."""
    distributed.check_same(run, "the source, data or settings")
    distributed.barrier()

    def claim_folder() -> None:
        resuming = claim(stack, folder, run, "fit")
        found = latest_fit_checkpoint(folder)
        if resuming and found:
            print(f"resuming the fit from step {found[0]} (checkpoint in {folder})", file=sys.stderr)

    distributed.on_main(claim_folder)
