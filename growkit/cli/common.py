"""What several commands share: model folders in and out, options, checks and summaries.

Nothing here imports torch or transformers at import time: every command's
parser is built from this module, and ``growkit --help`` must not wait for them.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.catalog import DEVICES
from ..core.errors import GrowError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: files besides weights and tokenizer that a grown model keeps from its source
CARRIED_FILES = ("preprocessor_config.json", "generation_config.json")


def check_apart(source: Path, out: Path, out_name: str) -> None:
    """Refuse an output folder that is the source folder, lies inside it or contains it.

    Paths are compared resolved (symlinks followed), and an existing output that
    is the source under another name (a bind mount, a hard-linked path) counts as
    the source, so no flag (``--overwrite`` included) can write over the model a
    command reads.
    """
    src, dst = source.resolve(), out.resolve()
    same = dst == src or (src.exists() and dst.exists() and os.path.samefile(src, dst))
    if same:
        where = "is the source folder"
    elif src in dst.parents:
        where = f"lies inside the source folder {source}"
    elif dst in src.parents:
        where = f"contains the source folder {source}"
    else:
        return
    if same:
        named_alike = os.path.normpath(out.absolute()) == os.path.normpath(source.absolute())
        where += f" {source}" if named_alike else f" {source} (both resolve to {src})"
    raise GrowError(f"{out_name} {out} {where}; growkit never writes over the model it reads: choose a folder outside it")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write over existing work, before anything is loaded or computed."""
    from ..resumable.folder import check_unused

    check_unused(out, allowed=overwrite, remedy="choose another folder, or pass --overwrite to replace everything in it")


def default_seq_len(config: PretrainedConfig, seq_len: int | None) -> int:
    """``--seq-len``, or 128 capped at the model's positions; refused when it exceeds them."""
    from ..arch import adapter_for

    limit = adapter_for(config).max_positions(config)
    if seq_len is None:
        return min(128, limit or 128)
    if seq_len < 1:
        raise GrowError(f"--seq-len must be positive, got {seq_len}")
    if limit is not None and seq_len > limit:
        raise GrowError(f"--seq-len {seq_len} exceeds the model's {limit} positions")
    return seq_len


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise GrowError(f"--batch-size must be positive, got {batch_size}")


def print_estimate(est) -> None:
    for line in est.lines():
        print(line)


def add_checkpoint_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--checkpoint-every", type=int, metavar="N",
        help=f"checkpoint the {what} every N steps, so that rerunning the same command after a kill "
        "resumes it (default: a tenth of --steps, so a run interrupted past its first tenth resumes; 0: never)",
    )


def checkpoint_interval(every: int | None, steps: int) -> int:
    """``--checkpoint-every``, or a tenth of the run's steps (at least 1) when it is not given."""
    if every is None:
        return max(1, steps // 10)
    if every < 0:
        raise GrowError(f"--checkpoint-every must not be negative, got {every}")
    return every


def add_device_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", choices=DEVICES,
                   help=f"where {what} runs: auto (default): a CUDA GPU when there is one, else the CPU; cpu (fp32); "
                   "cuda (bf16 autocast with fp32 weights, SDPA attention; refused without a GPU)")


def resolved_device(name: str) -> str:
    """The device ``--device`` means on this machine, as the command reports it (``cpu``, ``cuda:0``)."""
    from ..device import resolve_device

    device = resolve_device(name)
    return str(device)


def resume_hint(folder: Path, step: int | None) -> str:
    """What an interrupted run's message adds: rerunning resumes it, and from which step."""
    if step is None:
        return f"; no checkpoint was written yet (see --checkpoint-every), so rerunning the same command starts over"
    return f"; rerun the same command to resume from step {step} (checkpoint in {folder})"


def describe(label: str, config: PretrainedConfig) -> str:
    from ..arch import adapter_for
    from ..estimate import parameter_count

    d = adapter_for(config).dims(config)
    return (
        f"{label:<8} {config.model_type}: {d.layers} layers, hidden {d.hidden}, ffn {d.ffn}, "
        f"heads {d.heads} (kv {d.kv_heads}, head_dim {d.head_dim}), {parameter_count(config):,} parameters"
    )


def add_data_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("data (learned methods)")
    group.add_argument(
        "--data",
        help="text file or folder, a local HF datasets folder or a tokens folder from `growkit tokenize` (GPT-2, "
        "BERT, Llama); `digits` or an image folder (ViT); default: the embedded offline corpus, or digits for ViT",
    )
    group.add_argument("--batch-size", type=int, help="batch size (default: 16)")
    group.add_argument("--seq-len", type=int, help="tokens per sequence (default: 128, or the model's positions if fewer)")


def task_data(args: argparse.Namespace, config: PretrainedConfig, tokenizer):
    """The TaskData a command trains or fits on, from ``--data`` or the embedded default."""
    from ..arch import adapter_for
    from ..data import build_task_data

    path = None if args.data in (None, "digits") else args.data
    seq_len = default_seq_len(config, args.seq_len)
    return build_task_data(
        adapter_for(config).family, path=path, tokenizer=tokenizer, config=config,
        seq_len=seq_len, batch_size=args.batch_size, seed=args.seed,
    )


def load_model(folder: Path):
    """The model in ``folder`` and its tokenizer (None when the folder has none)."""
    from ..data.tokenizer import load_tokenizer
    from ..io import load_pretrained

    model = load_pretrained(folder)
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").is_file() else None
    return model, tokenizer


def save_model(model, out: Path, *, src: Path | None, tokenizer, overwrite: bool) -> None:
    """Save atomically, keeping the source's tokenizer and preprocessor files."""
    from ..io import save_pretrained

    extra = [src / name for name in CARRIED_FILES if src is not None and (src / name).is_file()]
    save_pretrained(model, out, tokenizer, overwrite=overwrite, extra_files=extra)
