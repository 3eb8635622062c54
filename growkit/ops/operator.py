"""The contract every learned growth operator (LiGO, Mango) follows."""
from __future__ import annotations

import torch
from torch import nn

from ..core.canonical import Canonical, Dims
from ..device import fp32_region


class GrowthOperator(nn.Module):
    """An ``nn.Module`` whose ``forward()`` materialises the target's canonical tensors.

    The source weights are held as buffers (frozen: they never receive gradients);
    only the operator's own parameters are fit. The buffers share the canonical
    view's tensors (which :meth:`~growkit.arch.Adapter.to_canonical` already
    copied out of the model), so the source is not held twice. ``materialize`` gives the plain
    target weights once fitting is done, after which the operator is thrown away.

    The forward always computes in fp32: calling the operator turns off any
    active autocast (see :mod:`growkit.device`), so a bf16 region around the
    target's forward never reaches the contraction that builds its weights.
    """

    def __call__(self, *args, **kwargs):
        with fp32_region():
            return super().__call__(*args, **kwargs)

    #: the source layer each target layer copies at the start (None: stacked); where the source's
    #: layers mix attention types, the adapter gives each target layer its source layer's type
    layer_source: tuple[int, ...] | None = None

    def __init__(self, source: Canonical, target_dims: Dims):
        super().__init__()
        self.source_meta = source.with_tensors({k: v.detach() for k, v in source.tensors.items()})
        self.target_dims = target_dims
        for i, (name, tensor) in enumerate(source.tensors.items()):
            self.register_buffer(f"source_{i}", tensor.detach(), persistent=False)
        self._source_names = list(source.tensors)

    def source_tensor(self, name: str) -> torch.Tensor:
        return getattr(self, f"source_{self._source_names.index(name)}")

    def forward(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def target_facts(self) -> dict:
        """The ``extra`` of the target's canonical view: the source's facts and the start's layer sources."""
        if self.layer_source is None:
            return dict(self.source_meta.extra)
        return {**self.source_meta.extra, "layer_source": self.layer_source}

    @torch.no_grad()
    def materialize(self) -> Canonical:
        """The target's canonical weights as plain tensors (no graph attached)."""
        tensors = {k: v.detach().clone().contiguous() for k, v in self().items()}
        canon = self.source_meta.with_tensors(tensors, self.target_dims)
        canon.extra = self.target_facts()
        canon.validate()
        return canon
