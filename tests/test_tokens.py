"""Tokens folders: growkit tokenize (formats, workers, resume, refusals), the held-out split and the streamed batches."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from growkit.arch.tiny import tiny_model
from growkit.cli import main
from growkit.core.errors import GrowError
from growkit.data import TokenCorpus, TokenTaskData, build_task_data, embedded_text, load_tokenizer, tokenize_corpus, train_bpe
from growkit.data import documents, pretokenize
from growkit.data.token_folder import HeldOut, token_dtype
from growkit.data.tokenizer import encode
from growkit.io import save_pretrained

VOCAB = 512


@pytest.fixture(scope="module")
def text() -> str:
    return embedded_text(200_000)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, text) -> Path:
    folder = tmp_path_factory.mktemp("model") / "small"
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB), folder, train_bpe(text, VOCAB))
    return folder


def _corpus(root: Path, text: str) -> tuple[Path, list[str]]:
    """A folder of every plain format; returns it and its documents in shard order."""
    root.mkdir()
    docs_c = [text[60_000 + i : 60_000 + i + 2_000] for i in range(0, 30_000, 2_000)]
    docs_d = [text[90_000 + i : 90_000 + i + 5_000] for i in range(0, 50_000, 5_000)]
    (root / "a.txt").write_text(text[:40_000], encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "b.md").write_text(text[40_000:60_000], encoding="utf-8")
    (root / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n\n" for d in docs_c), encoding="utf-8")
    with gzip.open(root / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs_d))
    (root / "notes.bin").write_bytes(b"\x00\xff")  # not a corpus file: skipped
    return root, [text[:40_000], *docs_c, *docs_d, text[40_000:60_000]]


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "shards").iterdir())}


def test_every_format_is_streamed_into_shards_with_document_ends(tmp_path, text, model_dir, monkeypatch):
    monkeypatch.setattr(documents, "PIECE_CHARS", 3_000)  # long text is cut into pieces and batches...
    monkeypatch.setattr(pretokenize, "BATCH_CHARS", 7_000)
    corpus, docs = _corpus(tmp_path / "corpus", text)
    index = tokenize_corpus(corpus, model_dir, tmp_path / "tokens", eval_fraction=0.1)
    tokenizer = load_tokenizer(model_dir)
    eos = tokenizer.eos_token_id
    expected = np.concatenate([np.array(encode(tokenizer, d) + [eos]) for d in docs])  # ...and gives the same ids
    stream = TokenCorpus(tmp_path / "tokens")
    assert np.array_equal(stream.read(0, stream.total), expected)
    assert [s["source"] for s in index["shards"]] == ["a.txt", "c.jsonl", "d.jsonl.gz", "sub/b.md"]
    assert [s["documents"] for s in index["shards"]] == [1, 15, 10, 1] and index["documents"] == 27
    assert index["dtype"] == "uint16" and (tmp_path / "tokens" / "shards" / "00000.bin").stat().st_size == 2 * index["shards"][0]["tokens"]
    assert index["tokens"] == len(expected) and index["tokenizer"]["vocab_size"] == VOCAB
    held = index["heldout"]
    assert held["train_tokens"] + held["eval_tokens"] == len(expected) and 0.05 < held["eval_tokens"] / len(expected) < 0.15
    assert index["tokenizer"]["digest"] == pretokenize.tokenizer_digest(load_tokenizer(tmp_path / "tokens" / "tokenizer"))


def test_workers_and_a_resumed_run_write_the_same_folder(tmp_path, text, model_dir, monkeypatch):
    corpus, _ = _corpus(tmp_path / "corpus", text)
    one = tokenize_corpus(corpus, model_dir, tmp_path / "one", eval_fraction=0.1)
    two = tokenize_corpus(corpus, model_dir, tmp_path / "two", eval_fraction=0.1, workers=2)
    assert one == two and _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")

    real, calls = pretokenize._tokenize_source, []

    def interrupted(task, report=None):
        calls.append(task[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task, report)

    monkeypatch.setattr(pretokenize, "_tokenize_source", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(corpus, model_dir, tmp_path / "resumed", eval_fraction=0.1)
    assert not (tmp_path / "resumed" / "index.json").exists()
    with pytest.raises(GrowError, match="unfinished tokenization"):
        build_task_data("gpt2", path=tmp_path / "resumed", seq_len=16, batch_size=4)
    calls.clear()
    assert tokenize_corpus(corpus, model_dir, tmp_path / "resumed", eval_fraction=0.1) == one
    assert calls == [2, 3]  # only the files not finished before
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "one")


def test_tokenize_command_and_its_refusals(tmp_path, text, model_dir, capsys):
    corpus, _ = _corpus(tmp_path / "corpus", text)
    out = tmp_path / "tokens"
    assert main(["tokenize", str(corpus), "--tokenizer", str(model_dir), "--out", str(out), "--eval-fraction", "0.1"]) == 0
    assert "tokenized 4 files, 27 documents" in capsys.readouterr().out
    big = tmp_path / "big-vocab-model"
    save_pretrained(tiny_model("gpt2", vocab_size=VOCAB // 2), big, load_tokenizer(model_dir))
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    cases = [
        ([str(corpus), "--tokenizer", str(model_dir), "--out", str(out)], "holds a finished tokenization"),
        ([str(corpus), "--tokenizer", str(big), "--out", str(tmp_path / "x")], "the model's vocab_size is 256"),
        ([str(tmp_path / "missing"), "--tokenizer", str(model_dir), "--out", str(tmp_path / "x")], "does not exist"),
        ([str(corpus / "notes.bin"), "--tokenizer", str(model_dir), "--out", str(tmp_path / "x")], "unknown file type"),
        ([str(bad_line), "--tokenizer", str(model_dir), "--out", str(tmp_path / "y")], "bad.jsonl:2: no 'text' text field"),
        ([str(corpus / "a.txt"), "--tokenizer", str(model_dir), "--out", str(tmp_path / "z")], "too few to hold out"),
        ([str(corpus), "--tokenizer", str(model_dir), "--out", str(tmp_path / "w"), "--workers", "0"], "--workers"),
    ]
    for argv, message in cases:
        assert main(["tokenize", *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "x").exists()  # refused before anything was written
    (tmp_path / "y" / "job.json").write_text("{}")  # another job's unfinished folder is not taken over
    assert main(["tokenize", str(corpus), "--tokenizer", str(model_dir), "--out", str(tmp_path / "y")]) == 1
    assert "unfinished tokenization of other data" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_is_refused_before_any_work(tmp_path, model_dir):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("text", encoding="utf-8")
    (tmp_path / "corpus" / "b.parquet").write_bytes(b"PAR1")
    with pytest.raises(GrowError, match=r"Parquet files needs the 'pyarrow' package; install it"):
        tokenize_corpus(tmp_path / "corpus", model_dir, tmp_path / "tokens")
    assert not (tmp_path / "tokens").exists()


def test_shard_dtype_follows_the_vocabulary():
    assert token_dtype(512) == token_dtype(65_536) == "uint16"
    assert token_dtype(65_537) == token_dtype(150_000) == "uint32"


@pytest.mark.parametrize("total, block, every, length", [(5_000, 64, 4, 16), (5_000, 64, 4, 100), (3_000, 32, 10, 7), (900, 64, 2, 64)])
def test_held_out_blocks_never_meet_train_windows(total, block, every, length):
    held = HeldOut(block, every, total)
    is_eval = np.zeros(total, dtype=bool)
    for g in range(held.groups):
        start = (g * every + every - 1) * block
        is_eval[start : start + block] = True
    is_eval[held.groups * block * every + (every - 1) * block :] = True  # the tail's held-out part
    assert held.eval_tokens == is_eval.sum()
    valid = {p for p in range(total - length + 1) if not is_eval[p : p + length].any()}
    drawn = [held.train_position(u, length) for u in range(held.train_starts(length))]
    assert sorted(drawn) == sorted(valid)  # every train window, each once
    evals = [held.eval_position(w, length) for w in range(held.eval_windows(length))]
    assert len(set(evals)) == len(evals) and all(is_eval[p : p + length].all() for p in evals)


def test_streamed_batches_are_seeded_resumable_and_held_out(tmp_path, text, model_dir):
    corpus, _ = _corpus(tmp_path / "corpus", text)
    tokenize_corpus(corpus, model_dir, tmp_path / "tokens", eval_fraction=0.1)
    data = build_task_data("gpt2", path=tmp_path / "tokens", tokenizer=load_tokenizer(model_dir), seq_len=16, batch_size=4)
    assert isinstance(data, TokenTaskData) and data.info["tokens"] == data.corpus.total
    stream = data.train_batches(seed=3)
    first = [next(stream) for _ in range(5)]
    resumed = next(data.train_batches(seed=3, start=4))  # data position = step, nothing replayed
    assert torch.equal(resumed["input_ids"], first[4]["input_ids"])
    assert torch.equal(next(data.train_batches(seed=3))["input_ids"], first[0]["input_ids"])
    assert not torch.equal(next(data.train_batches(seed=4))["input_ids"], first[0]["input_ids"])
    assert all(torch.equal(b["labels"], b["input_ids"]) and b["input_ids"].shape == (4, 16) for b in first)
    again = build_task_data("gpt2", path=tmp_path / "tokens", seq_len=16, batch_size=4)  # the folder's own tokenizer
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again.eval_batches, data.eval_batches))
    whole = torch.from_numpy(data.corpus.read(0, data.corpus.total).astype(np.int64))
    held = data.corpus.heldout
    eval_rows = {tuple(whole[p : p + 16].tolist()) for p in (held.eval_position(w, 16) for w in range(held.eval_windows(16)))}
    assert all(tuple(row.tolist()) in eval_rows for b in data.eval_batches for row in b["input_ids"])
    assert 1 <= len(data.eval_batches) <= 8
    tiny_model("gpt2", vocab_size=VOCAB)(**first[0]).loss.backward()  # the model takes the batches
    bert = build_task_data("bert", path=tmp_path / "tokens", seq_len=16, batch_size=4)
    batch = next(bert.train_batches(0))
    tokenizer = bert.tokenizer
    assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all() and (batch["input_ids"][:, -1] == tokenizer.sep_token_id).all()
    assert torch.equal(next(bert.train_batches(0, start=0))["labels"], batch["labels"])  # masks drawn from (seed, step)


def test_a_tokens_folder_of_another_tokenizer_or_too_short_is_refused(tmp_path, text, model_dir):
    corpus, _ = _corpus(tmp_path / "corpus", text)
    tokenize_corpus(corpus, model_dir, tmp_path / "tokens", eval_fraction=0.1)
    other = train_bpe(text[:50_000], VOCAB)
    with pytest.raises(GrowError, match="tokenized with another tokenizer"):
        build_task_data("gpt2", path=tmp_path / "tokens", tokenizer=other, seq_len=16, batch_size=4)
    with pytest.raises(GrowError, match="does not fit .* held-out blocks"):
        build_task_data("gpt2", path=tmp_path / "tokens", seq_len=4096, batch_size=4)
    shard = tmp_path / "tokens" / "shards" / "00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(GrowError, match="is damaged: 00001.bin"):
        build_task_data("gpt2", path=tmp_path / "tokens", seq_len=16, batch_size=4)


def test_grow_fits_on_a_tokens_folder(tmp_path, text, model_dir, capsys):
    corpus, _ = _corpus(tmp_path / "corpus", text)
    tokenize_corpus(corpus, model_dir, tmp_path / "tokens", eval_fraction=0.1)
    argv = ["grow", str(model_dir), str(tmp_path / "big"), "--method", "ligo", "--layers", "3", "--steps", "2",
            "--data", str(tmp_path / "tokens"), "--seq-len", "16", "--batch-size", "4"]
    assert main(argv) == 0
    assert "fit 2 steps" in capsys.readouterr().out
    assert load_tokenizer(tmp_path / "big").get_vocab() == load_tokenizer(model_dir).get_vocab()
