"""Char-LM data: corpus validation, vocabulary, contiguous-stream batches."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fastrnn.apps.data import DEFAULT_DATA, StreamBatches, Vocab, load_text, split, val_streams
from fastrnn.apps.errors import DataError, VocabularyError


def test_bundled_corpus_is_tiny_shakespeare():
    text = load_text()
    assert len(text) == 1_115_394
    assert len(Vocab.from_text(text)) == 65
    assert hashlib.md5(DEFAULT_DATA.read_bytes()).hexdigest() == "6fb458f1232090904fb40fe944165e91"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"\xef\xbb\xbf", "empty"),  # a byte-order mark and nothing else
        (b"PK\x03\x04\x00\x00binary", "binary"),
        (b"caf\xe9 au lait", "not valid UTF-8"),
    ],
    ids=["missing", "empty", "bom-only", "binary", "latin-1"],
)
def test_bad_data_file(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_text(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_directory_is_not_data(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        load_text(tmp_path)


def test_utf8_text_and_bom(tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes("\ufeffnaïve café — ünïcödé\n".encode())
    text = load_text(path)
    assert text.startswith("naïve")
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    assert vocab.decode(vocab.encode(text)) == text


def test_vocabulary_error_names_the_characters():
    vocab = Vocab("abc \n")
    with pytest.raises(VocabularyError, match=r"prompt has 2 character\(s\).*'Z', '€'"):
        vocab.encode("abZ c€Z", "prompt")


def test_split_is_first_90_last_10():
    ids = torch.arange(1000)
    train, val = split(ids)
    assert train.tolist() == list(range(900)) and val.tolist() == list(range(900, 1000))


def test_streams_continue_where_they_left_off():
    ids = torch.arange(1000)
    b = StreamBatches(ids, batch_size=4, seq_len=10)
    x0, y0, reset0 = b.batch(0)
    x1, y1, reset1 = b.batch(1)
    assert x0.shape == (4, 10) and reset0 and not reset1
    assert torch.equal(y0, x0 + 1)  # targets are the next characters
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # each row continues its own stream
    assert x0[:, 0].tolist() == [0, 250, 500, 750]  # B equal contiguous segments
    # after one pass the streams wrap to their start and ask for a state reset
    x, _, reset = b.batch(b.steps_per_epoch)
    assert reset and torch.equal(x, x0)


def test_ranks_own_disjoint_streams():
    ids = torch.arange(2000)
    whole = StreamBatches(ids, batch_size=6, seq_len=8)
    parts = [StreamBatches(ids, batch_size=3, seq_len=8, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([p.batch(5)[0] for p in parts]), whole.batch(5)[0])


def test_chunks_cover_every_character_once():
    ids = torch.arange(103)
    b = StreamBatches(ids, batch_size=2, seq_len=7)
    ys = torch.cat([y for _, y in b.chunks()], dim=1)
    assert ys.shape[1] == b.segment - 1 and b.tokens_per_pass == ys.numel()
    assert torch.equal(ys[0], torch.arange(1, 51)) and torch.equal(ys[1], torch.arange(52, 102))


def test_text_shorter_than_one_batch():
    with pytest.raises(DataError, match=r"too short for one batch.*train split has 500.*--batch-size"):
        StreamBatches(torch.arange(500), batch_size=8, seq_len=64, name="train")
    assert val_streams(100, batch_size=32, seq_len=64, world_size=1) == 1
