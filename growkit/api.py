"""The one-call public API: ``grow(model, target, method=...)``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from .arch import adapter_for
from .core.errors import GrowError
from .fit import FitConfig, FitResult, fit
from .ops import get_method, grow_fixed, methods

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

    Fixed methods may swap either half with ``width=`` / ``depth=``. Learned
    methods (``ligo``, ``mango``) need ``data`` (batches with labels) and fit for
    ``steps`` steps (default 100); ``return_fit=True`` also returns their :class:`FitResult`.
    An argument the method would ignore (``data=`` for a fixed method, ``rank=``
    for ligo) is refused.
    With ``checkpoint_dir`` and ``checkpoint_every`` the fit checkpoints there and
    resumes from the newest checkpoint it finds (see :func:`growkit.fit.fit`).
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
    source = adapter.to_canonical(model)
    model_class = type(model)
    if not spec.learned:
        canon = grow_fixed(source, tgt_dims, width or spec.width, depth or spec.depth, seed=seed, **options)
        return adapter.from_canonical(canon, config, model_class)
    if data is None:
        raise GrowError(
            f"{method} is fit on the target's loss and needs data: pass data= (an iterable of batch dicts "
            "with labels), or --data PATH on the command line"
        )
    operator = spec.build(source, tgt_dims, seed=seed, **options)
    template = adapter.from_canonical(operator.materialize(), config, model_class)
    fit_config = fit_config or FitConfig(steps=100 if steps is None else steps)
    result = fit(operator, template, adapter, data, fit_config, seed=seed,
                 checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
    grown = adapter.from_canonical(operator.materialize(), config, model_class)
    return (grown, result) if return_fit else grown
