"""``growkit tokenize``: a corpus streamed through a model's tokenizer into a tokens folder, once.

Every source file becomes one shard, written by one worker process in bounded
memory (a few megabytes of text at a time). A shard is whole once
its record (``shards/NNNNN.json``) exists, so a rerun of an interrupted job
tokenizes only the files it had not finished. The index is written last.
See :mod:`growkit.data.token_folder` for the layout.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ..core.errors import GrowError
from ..resumable.folder import check_unused
from .documents import Piece, Source, check_readers, find_sources, pieces
from .token_folder import DTYPES, FORMAT, INDEX_FILE, JOB_FILE, SHARD_DIR, TOKENIZER_DIR, VERSION, HeldOut, token_dtype
from .tokenizer import check_vocab, load_tokenizer, text_chunks

BATCH_CHARS = 1 << 20  #: text encoded per call (bounds the encoder's working memory)


def tokenizer_digest(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation (vocabulary, merges, normalisers, special tokens)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def document_end_id(tokenizer) -> int:
    """The id that ends every document: the end-of-text token, else [SEP]."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise GrowError("the tokenizer has no end-of-text (eos) or [SEP] token to mark where documents end")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _groups(stream: Iterator[Piece]) -> Iterator[list[Piece]]:
    """Consecutive pieces gathered until they hold about ``BATCH_CHARS`` characters."""
    group, size = [], 0
    for piece in stream:
        group.append(piece)
        size += len(piece[0])
        if size >= BATCH_CHARS:
            yield group
            group, size = [], 0
    if group:
        yield group


def _encode(backend, group: list[Piece], eos_id: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """The ids of a group of pieces, with ``eos_id`` after each document's last piece, and the documents ended."""
    chunks = [text_chunks(text) for text, _ in group]
    encoded = iter(backend.encode_batch_fast([c for cs in chunks for c in cs], add_special_tokens=False))
    parts, ended = [], 0
    eos = np.array([eos_id], dtype=dtype)
    for (_, ends), cs in zip(group, chunks):
        parts.extend(np.asarray(next(encoded).ids, dtype=dtype) for _ in cs)
        if ends:
            parts.append(eos)
            ended += 1
    return (np.concatenate(parts) if parts else np.empty(0, dtype=dtype)), ended


def _tokenize_source(task: tuple, report: Callable[[int], None] | None = None) -> dict:
    """Write one source's shard and its record; runs in a worker process (or in this one for one worker)."""
    from tokenizers import Tokenizer

    number, source, tokenizer_json, eos_id, dtype_name, field, shard_dir = task
    backend = Tokenizer.from_str(tokenizer_json)
    dtype = DTYPES[dtype_name]
    final = shard_dir / f"{number:05d}.bin"
    partial = final.with_name(final.name + ".partial")
    digest, tokens, documents = hashlib.sha256(), 0, 0
    with partial.open("wb") as f:
        for group in _groups(pieces(source, field)):
            ids, ended = _encode(backend, group, eos_id, dtype)
            data = ids.tobytes()
            f.write(data)
            digest.update(data)
            tokens += len(ids)
            documents += ended
            if report is not None:
                report(sum(len(text.encode("utf-8")) for text, _ in group))
    os.replace(partial, final)
    record = {"file": f"{SHARD_DIR}/{final.name}", "source": source.name, "tokens": tokens, "documents": documents,
              "sha256": digest.hexdigest(), "source_bytes": source.size()}
    _write_json(final.with_suffix(".json"), record)
    return record


def _quiet_worker() -> None:
    """Workers leave Ctrl-C and SIGTERM to the parent, which stops them (a finished shard is kept)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _job(sources: list[Source], digest: str, dtype: str, eos_id: int, field: str) -> dict:
    return {"format": FORMAT, "version": VERSION, "tokenizer_digest": digest, "dtype": dtype, "eos_id": eos_id,
            "field": field, "sources": [[s.name, s.size()] for s in sources]}


def _claim(out: Path, job: dict) -> bool:
    """Create ``out`` or accept it as this job's unfinished run (True: resuming); refuse anything else."""
    if not check_unused(out, allowed=True):
        return False
    if (out / INDEX_FILE).is_file():
        raise GrowError(f"{out} holds a finished tokenization; choose a new folder")
    check_unused(out, allowed=(out / JOB_FILE).is_file(), remedy="choose a new folder")
    try:
        old = json.loads((out / JOB_FILE).read_text(encoding="utf-8"))
    except ValueError:
        old = None
    if old != job:
        raise GrowError(f"{out} holds an unfinished tokenization of other data or with another tokenizer or settings; "
                        "rerun that command to finish it, or choose a new folder")
    return True


def _finished(shard_dir: Path, number: int) -> dict | None:
    path = shard_dir / f"{number:05d}.json"
    if not path.is_file() or not (shard_dir / f"{number:05d}.bin").is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _check_model_vocab(tokenizer, model_dir: Path) -> None:
    """Refuse a tokenizer with more ids than the model folder's embedding table (when it holds a config)."""
    path = model_dir / "config.json"
    if path.is_file():
        vocab = json.loads(path.read_text(encoding="utf-8")).get("vocab_size")
        check_vocab(tokenizer, SimpleNamespace(vocab_size=vocab))


def tokenize_corpus(data: str | Path, tokenizer_dir: str | Path, out: str | Path, *, workers: int = 1,
                    field: str = "text", eval_fraction: float = 0.01, progress: bool | None = None) -> dict:
    """Tokenize the corpus at ``data`` with the tokenizer in ``tokenizer_dir`` into the tokens folder ``out``.

    Rerunning the same call after an interruption finishes the job (files already
    tokenized are kept). Returns the index (also written to ``out/index.json``).
    """
    if workers < 1:
        raise GrowError(f"--workers must be at least 1, got {workers}")
    if not 0 < eval_fraction <= 0.5:
        raise GrowError(f"--eval-fraction must be in (0, 0.5], got {eval_fraction}")
    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    sources = find_sources(data)
    check_readers(sources)
    tokenizer = load_tokenizer(tokenizer_dir)
    _check_model_vocab(tokenizer, tokenizer_dir)
    eos_id, dtype, digest = document_end_id(tokenizer), token_dtype(len(tokenizer)), tokenizer_digest(tokenizer)
    job = _job(sources, digest, dtype, eos_id, field)
    resuming = _claim(out, job)
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out / JOB_FILE, job)
    if not (out / TOKENIZER_DIR / "tokenizer.json").is_file():
        tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    records = {i: r for i in range(len(sources)) if (r := _finished(shard_dir, i)) is not None}
    todo = [i for i in range(len(sources)) if i not in records]
    if resuming:
        print(f"resuming: {len(records)} of {len(sources)} files already tokenized", file=sys.stderr)
    tasks = [(i, sources[i], tokenizer.backend_tokenizer.to_str(), eos_id, dtype, field, shard_dir) for i in todo]
    sizes = [s.size() for s in sources]
    bar = tqdm(total=sum(sizes), initial=sum(sizes[i] for i in records), unit="B", unit_scale=True, desc="tokenize",
               disable=not (sys.stderr.isatty() if progress is None else progress))
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            records[task[0]] = _tokenize_source(task, bar.update)
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = context.Pool(min(workers, len(tasks)), initializer=_quiet_worker)
        try:
            for record in pool.imap_unordered(_tokenize_source, tasks):
                number = int(Path(record["file"]).stem)
                records[number] = record
                bar.update(sizes[number])
            pool.close()
        finally:
            pool.terminate()
            pool.join()
    bar.close()
    return _write_index(out, [records[i] for i in range(len(sources))], digest, len(tokenizer), eos_id, dtype,
                        eval_fraction)


def _write_index(out: Path, shards: list[dict], digest: str, vocab: int, eos_id: int, dtype: str,
                 eval_fraction: float) -> dict:
    total = sum(s["tokens"] for s in shards)
    held = HeldOut.choose(total, eval_fraction)
    if held.groups < 1:
        raise GrowError(
            f"the corpus gave {total} tokens, too few to hold out a block of {held.block} at --eval-fraction "
            f"{eval_fraction} (it needs {held.block * held.every}); use more data or a larger --eval-fraction"
        )
    index = {
        "format": FORMAT, "version": VERSION, "dtype": dtype, "tokens": total,
        "documents": sum(s["documents"] for s in shards),
        "source_bytes": sum(s["source_bytes"] for s in shards),
        "tokenizer": {"digest": digest, "vocab_size": vocab, "eos_id": eos_id},
        "heldout": {"every": held.every, "block": held.block, "train_tokens": held.train_tokens,
                    "eval_tokens": held.eval_tokens},
        "shards": [{k: s[k] for k in ("file", "source", "tokens", "documents", "sha256")} for s in shards],
    }
    _write_json(out / INDEX_FILE, index)
    return index
