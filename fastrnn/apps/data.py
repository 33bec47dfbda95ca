"""Corpus loading, the character vocabulary, and contiguous-stream batches.

Shapes: B streams (rows) per process, T steps per batch (``--seq-len``), W processes, S = B * W streams.

A split of N characters is cut into S equal contiguous segments of L = N // S characters; process ``rank``
owns rows ``rank*B .. rank*B + B - 1``. Batch ``k`` of an epoch is ``x = seg[:, kT : kT+T]`` with targets
shifted by one, so each row continues exactly where the previous batch left off and the recurrent state
can be carried across batches. The batch is a pure function of the step number, which is what makes a
resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from fastrnn.apps.errors import DataError, VocabularyError

#: Tiny Shakespeare, shipped inside the package; the default corpus.
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"

#: fraction of the text used for training; the rest (the end of the text) is the validation split
TRAIN_FRACTION = 0.9


def load_text(path: str | Path | None = None) -> str:
    """Read a UTF-8 text file (default: the bundled Tiny Shakespeare) and check it is usable text.

    Raises:
        DataError: the file is missing, not a regular file, unreadable, empty, binary (holds NUL bytes)
            or not valid UTF-8.
    """
    p = Path(path) if path is not None else DEFAULT_DATA
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if not p.is_file():
        raise DataError(f"data path is not a regular file: {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {p}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"data file is empty: {p}")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(f"data file looks binary (NUL byte at offset {nul}), expected UTF-8 text: {p}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file is not valid UTF-8 (bad byte at offset {e.start}): {p}") from None
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark is not part of the text
        text = text[1:]
    if not text:
        raise DataError(f"data file is empty: {p}")
    return text


class Vocab:
    """The sorted set of characters of a corpus, with encode/decode.

    Args:
        chars: the vocabulary as one string of distinct characters, in id order.
    """

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be distinct")
        self.chars = chars
        self.index = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def missing(self, text: str) -> list[str]:
        """Characters of ``text`` that are not in the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.index))

    def encode(self, text: str, what: str = "text") -> Tensor:
        """Ids of ``text`` as an int64 tensor [len(text)].

        Raises:
            VocabularyError: ``text`` holds characters outside the vocabulary (named in the message).
        """
        bad = self.missing(text)
        if bad:
            shown = ", ".join(repr(ch) for ch in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise VocabularyError(
                f"{what} has {len(bad)} character(s) outside the model's {len(self)}-character vocabulary: {shown}"
            )
        return torch.tensor([self.index[ch] for ch in text], dtype=torch.int64)

    def decode(self, ids: Tensor | list[int]) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)


def split(ids: Tensor, train_fraction: float = TRAIN_FRACTION) -> tuple[Tensor, Tensor]:
    """First ``train_fraction`` of the ids for training, the rest for validation."""
    n = int(len(ids) * train_fraction)
    return ids[:n], ids[n:]


class StreamBatches:
    """B contiguous streams over one split, for one process of W.

    Args:
        ids: the split, int64 [N].
        batch_size: B, streams owned by this process.
        seq_len: T, steps per batch.
        rank, world_size: this process and the number of processes; together they own S = B * W streams.
        name: the split's name, for error messages.

    Raises:
        DataError: a segment is shorter than one batch (T + 1 characters).
    """

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 name: str = "train") -> None:
        streams = batch_size * world_size
        seg = len(ids) // streams
        if seg < seq_len + 1:
            procs = f" x {world_size} processes" if world_size > 1 else ""
            raise DataError(
                f"text too short for one batch: the {name} split has {len(ids):,} characters but "
                f"{batch_size} streams{procs} x (--seq-len {seq_len} + 1) = {streams * (seq_len + 1):,} are "
                f"needed; use a longer file or a smaller --batch-size / --seq-len"
            )
        self.batch_size, self.seq_len, self.segment = batch_size, seq_len, seg
        self.rows = ids[: streams * seg].view(streams, seg)[rank * batch_size:(rank + 1) * batch_size]  # [B, L]
        self.steps_per_epoch = (seg - 1) // seq_len

    def batch(self, step: int) -> tuple[Tensor, Tensor, bool]:
        """Inputs [B, T], targets [B, T], and whether this batch starts a new pass (state must be reset)."""
        k = step % self.steps_per_epoch
        t = k * self.seq_len
        x = self.rows[:, t:t + self.seq_len]
        y = self.rows[:, t + 1:t + self.seq_len + 1]
        return x, y, k == 0

    def chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole segment in order, as (inputs [B, <=T], targets [B, <=T]); the last chunk may be shorter."""
        for t in range(0, self.segment - 1, self.seq_len):
            end = min(t + self.seq_len, self.segment - 1)
            yield self.rows[:, t:end], self.rows[:, t + 1:end + 1]

    @property
    def chars_per_pass(self) -> int:
        """Characters predicted by one pass of :meth:`chunks` on this process."""
        return self.batch_size * (self.segment - 1)


def val_streams(n_val: int, batch_size: int, seq_len: int, world_size: int) -> int:
    """Streams per process for the validation split: up to ``batch_size``, each at least T + 1 long."""
    return max(1, min(batch_size, n_val // (world_size * (seq_len + 1))))
