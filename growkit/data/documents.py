"""Documents streamed from a corpus on disk, a bounded piece at a time.

A corpus is a file or a folder of them: text (.txt, .md; one document per
file), JSON lines (.jsonl, .jsonl.gz; one document per line, its text in a
field), Parquet (.parquet; a text column, read with pyarrow) or a folder saved
by ``datasets.save_to_disk``. Every reader yields ``(text, ends_document)``
pieces of at most about ``PIECE_CHARS`` characters, so a 10 GB file never sits
in memory; long text is cut after a blank line, where :func:`text_chunks`
would cut it too, so the pieces tokenize to the same ids as the whole text.
"""
from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.errors import GrowError
from .corpus import TEXT_SUFFIXES, is_hf_dataset

PIECE_CHARS = 1 << 22  #: about 4 MB of text per piece
ROW_BATCH = 1024  #: rows per read from Parquet and datasets folders
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
Piece = tuple[str, bool]


@dataclass(frozen=True)
class Source:
    """One unit of tokenizing work: a file, or a whole ``datasets`` folder; ``name`` is relative to the corpus."""

    path: Path
    name: str
    kind: str  #: "text", "jsonl", "parquet" or "datasets"

    def size(self) -> int:
        """Bytes on disk (the progress bar's unit)."""
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def find_sources(path: str | Path) -> list[Source]:
    """The corpus's readable files (sorted by path), or the ``datasets`` folder itself; refused when there are none."""
    path = Path(path)
    if not path.exists():
        raise GrowError(f"data path {path} does not exist")
    if path.is_dir() and is_hf_dataset(path):
        return [Source(path, path.name, "datasets")]
    if path.is_file():
        kind = _kind(path)
        if kind is None:
            raise GrowError(f"{path}: unknown file type; use .txt, .md, .jsonl, .jsonl.gz or .parquet")
        return [Source(path, path.name, kind)]
    found = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        kind = _kind(file)
        if kind is not None:
            found.append(Source(file, file.relative_to(path).as_posix(), kind))
    if not found:
        raise GrowError(f"{path} holds no .txt, .md, .jsonl, .jsonl.gz or .parquet files")
    return found


def check_readers(sources: list[Source]) -> None:
    """Refuse, before any work, sources whose reader package is not installed."""
    kinds = {s.kind for s in sources}
    if "parquet" in kinds:
        _require("pyarrow", "Parquet files")
    if "datasets" in kinds:
        _require("datasets", "a Hugging Face datasets folder")


def _require(package: str, what: str) -> None:
    try:
        __import__(package)
    except ImportError:
        raise GrowError(f"reading {what} needs the '{package}' package; install it (pip install {package})") from None


def _cut(text: str) -> int:
    """Where to end a piece of ``text``: after its last blank line, else its last newline, else its end."""
    for sep in ("\n\n", "\n"):
        at = text.rfind(sep)
        if at > 0:
            return at + len(sep)
    return len(text)


def _text_pieces(path: Path) -> Iterator[Piece]:
    """A text file as one document, in pieces cut after blank lines."""
    carry = ""
    try:
        with path.open(encoding="utf-8") as f:
            while True:
                block = f.read(PIECE_CHARS)
                if not block:
                    break
                text = carry + block
                end = _cut(text)
                carry = text[end:]
                if end:
                    yield text[:end], False
    except UnicodeDecodeError as err:
        raise GrowError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); convert it to UTF-8") from None
    yield carry, True


def _jsonl_pieces(path: Path, field: str) -> Iterator[Piece]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as err:
                    raise GrowError(f"{path}:{number}: not a JSON line ({err})") from None
                text = row.get(field) if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise GrowError(f"{path}:{number}: no {field!r} text field")
                yield text, True
    except UnicodeDecodeError as err:
        raise GrowError(f"{path} is not UTF-8 (byte {err.start}: {err.reason})") from None
    except (OSError, EOFError) as err:  # gzip: a truncated or corrupt archive
        raise GrowError(f"cannot read {path}: {err}") from None


def _parquet_pieces(path: Path, field: str) -> Iterator[Piece]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    if field not in file.schema_arrow.names:
        raise GrowError(f"{path}: no {field!r} column (it has {', '.join(file.schema_arrow.names)})")
    for batch in file.iter_batches(batch_size=ROW_BATCH, columns=[field]):
        for text in batch.column(0).to_pylist():
            yield text or "", True


def _datasets_pieces(folder: Path, field: str) -> Iterator[Piece]:
    """The ``field`` column of a ``save_to_disk`` folder (its train split if a dict), read from its memory map."""
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise GrowError(f"{folder}: the dataset has no 'train' split (it has {', '.join(ds)})")
        ds = ds["train"]
    if field not in ds.column_names:
        raise GrowError(f"{folder}: the dataset has no {field!r} column (it has {', '.join(ds.column_names)})")
    for rows in ds.select_columns([field]).iter(batch_size=ROW_BATCH):
        for text in rows[field]:
            yield text or "", True


def pieces(source: Source, field: str = "text") -> Iterator[Piece]:
    """``(text, ends_document)`` pieces of ``source``, each at most about ``PIECE_CHARS`` characters."""
    if source.kind == "text":
        return _text_pieces(source.path)
    if source.kind == "jsonl":
        return _jsonl_pieces(source.path, field)
    if source.kind == "parquet":
        return _parquet_pieces(source.path, field)
    return _datasets_pieces(source.path, field)
