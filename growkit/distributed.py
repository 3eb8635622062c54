"""Several processes, one run: data sharding, exact loss weighting, reductions and rank-0 writes.

Launch any command with ``torchrun --nproc_per_node N -m growkit ...`` or
``accelerate launch --num_processes N -m growkit ...``; the launcher sets
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address, and
:func:`setup` joins the process group (through Accelerate's ``PartialState``:
gloo on CPU, NCCL on CUDA). Without a launcher everything here is a no-op and
every loop runs exactly the single-process code.

The run is the single-process run, split:

- **Data.** Every process draws the same *global* batch from
  ``TaskData.train_batches(seed)`` (so the data order, and BERT's masking, are
  those of one process) and keeps a contiguous block of its rows
  (:func:`shard`). The global batch size stays ``--batch-size``.
- **Loss.** A model's loss is a mean over the items of its batch (tokens that
  are predicted, or images), and ranks can hold different numbers of items (MLM
  masks, a batch that does not split evenly). Each process therefore weights its
  loss by its share of the global batch's items, ``n_rank / N``: the weighted
  losses sum to the global batch's mean loss and their gradients sum to its
  gradient, exactly, whatever the split. (DDP *averages* gradients, so the
  training loop passes ``world * weighted loss`` to backward.)
- **Reductions.** Reported losses (train and eval) are sums of the weighted
  losses over the processes: the single-process mean. FLOPs and tokens are
  counted for the global batch, so they are the sum over processes, and
  tokens/s is the global throughput.
- **Writes.** Only rank 0 writes (metrics, checkpoints, run.json, the final
  model, reports); :func:`on_main` runs such a step on rank 0 and hands its
  error, if any, to every process, so all of them stop with the same message
  instead of waiting for one another. Barriers follow every checkpoint, so a
  checkpoint on disk is one that every process has passed.

Dropout draws its own stream on every rank (seeded ``seed + rank``): with dropout
on, a multi-process run is the same training *distribution*, not the same bits;
with dropout off (growkit's tiny models) it matches a single process to fp32
rounding.
"""
from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from .core.errors import GrowError

T = TypeVar("T")
IGNORE = -100


def launched() -> bool:
    """Whether a launcher started several processes for this run (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def setup(device: str | torch.device = "cpu") -> None:
    """Join the launcher's process group (gloo for a CPU run, NCCL for CUDA); a no-op for a single process."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():  # pragma: no cover - a torch built without distributed support
        raise GrowError("this PyTorch has no torch.distributed; run growkit as a single process")
    from accelerate import PartialState

    PartialState(cpu=torch.device(device).type == "cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (a no-op for one process)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (e.g. each checks its own shard of the weights)."""
    if not active():
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) == 0


def _collective_device() -> torch.device:
    """Where a tensor must live for this process group's collectives (NCCL: this process's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(obj: Any) -> list:
    """``obj`` of every process, in rank order, on every process."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same(value: Any, what: str) -> None:
    """Refuse a run whose processes disagree on ``value`` (e.g. a digest of their data)."""
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        differ = [r for r, v in enumerate(values) if v != values[0]]
        raise GrowError(
            f"{what} differs between the processes (ranks {differ} disagree with rank 0); every process "
            "must read the same model, data and settings"
        )


def _broadcast_outcome(error: BaseException | None, result: Any) -> Any:
    box = [None if error is None else " ".join(str(error).split()) or type(error).__name__, result]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise GrowError(box[0])
    return box[1]


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn`` on rank 0 only; every process returns its (picklable) result or raises its error."""
    if not active():
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # handed to every process, then raised here too
            error = err
    return _broadcast_outcome(error, result)


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the others (e.g. rank 0 trains and saves a tokenizer, the others load it)."""
    if not active():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as err:
            error = err
    _broadcast_outcome(error, None)
    return result if is_main() else fn()


# --- data and loss ------------------------------------------------------------------


def loss_items(batch: dict, causal: bool) -> int:
    """How many items the model's mean loss averages over: predicted tokens (labels not -100), or rows."""
    labels = batch.get("labels")
    if labels is None:
        raise GrowError("the batches need labels: the model returns no loss without them")
    if labels.dim() == 1:  # classification: one label per row
        return int((labels != IGNORE).sum())
    if causal:  # the model predicts token t+1 from token t: the first label is never a target
        labels = labels[:, 1:]
    return int((labels != IGNORE).sum())


def batch_rows(batch: dict) -> int:
    return len(next(iter(batch.values())))


def shard(batch: dict, causal: bool, rank_: int | None = None, world: int | None = None) -> tuple[dict, float, int]:
    """This process's block of the global ``batch``: ``(rows, weight, items)``.

    The rows are a contiguous block (``tensor_split`` over the processes, so
    uneven sizes differ by one row at most); ``weight`` is the block's share of
    the global batch's loss items, so the weighted losses of all blocks sum to
    the global batch's mean loss. A block may be empty only where the global
    batch has fewer rows than there are processes.
    """
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    rows = batch_rows(batch)
    index = torch.tensor_split(torch.arange(rows), world)[rank_]
    start, stop = (int(index[0]), int(index[-1]) + 1) if len(index) else (0, 0)
    part = {k: v[start:stop] for k, v in batch.items()}
    total = loss_items(batch, causal)
    items = loss_items(part, causal) if stop > start else 0
    weight = items / total if total else float("nan")
    return part, weight, items


def weighted_loss(output: Any, weight: float, items: int) -> torch.Tensor:
    """``output.loss * weight``; a block without loss items contributes an exact zero that still reaches every weight.

    (HF's mean over zero items is NaN; multiplying the logits by zero keeps the
    autograd graph, so DDP sees a gradient, of zero, for every parameter.)
    """
    if items == 0 and weight == weight:  # weight is NaN only when the global batch has no items (NaN like one process)
        return output.logits.sum() * 0.0
    if getattr(output, "loss", None) is None:
        raise GrowError("the model returned no loss: the batches need labels")
    return output.loss * weight


def check_batch(rows: int, what: str = "the batch size") -> None:
    if rows < world_size():
        raise GrowError(f"{what} ({rows}) is smaller than the {world_size()} processes; every process needs a row")


# --- parameters ---------------------------------------------------------------------


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters to every process (a replicated module starts identical everywhere)."""
    if not active():
        return
    with torch.no_grad():
        for p in module.parameters():
            dist.broadcast(p.data, src=0)


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over the processes, in one flat all-reduce (a replicated operator is small)."""
    if not active() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
