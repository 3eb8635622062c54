"""Offline data for every family: corpus, tokenizer and deterministic batches (imports core only)."""
from .batches import KIND, Masker, TaskData, build_task_data
from .corpus import embedded_text, read_text
from .images import digits, image_folder
from .tokenizer import check_vocab, load_tokenizer, train_bpe

__all__ = [
    "KIND",
    "Masker",
    "TaskData",
    "build_task_data",
    "check_vocab",
    "digits",
    "embedded_text",
    "image_folder",
    "load_tokenizer",
    "read_text",
    "train_bpe",
]
