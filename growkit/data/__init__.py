"""Offline data for every family: corpus, tokenizer, tokens folders and deterministic batches (imports core only)."""
from .batches import Masker, TaskData, build_task_data, data_digest
from .corpus import embedded_text, read_text
from .images import digits, image_folder
from .pretokenize import tokenize_corpus
from .token_folder import TokenCorpus, is_token_folder
from .token_stream import TokenTaskData
from .tokenizer import check_vocab, load_tokenizer, train_bpe

__all__ = [
    "Masker",
    "TaskData",
    "TokenCorpus",
    "TokenTaskData",
    "build_task_data",
    "check_vocab",
    "data_digest",
    "digits",
    "embedded_text",
    "image_folder",
    "is_token_folder",
    "load_tokenizer",
    "read_text",
    "tokenize_corpus",
    "train_bpe",
]
