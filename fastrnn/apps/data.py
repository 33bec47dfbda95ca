"""Corpora, tokens (characters or words), the vocabulary, and contiguous-stream batches.

Shapes: B streams (rows) per process, T steps per batch (``--seq-len``), W processes, S = B * W streams.

Corpora: a UTF-8 text file, the bundled Tiny Shakespeare (the default), or ``human_numbers``, generated here
(:func:`human_numbers_text`). Tokens are characters or whitespace-separated words (``--tokens``); the first
``train_fraction`` of the token stream trains and the rest validates (90/10, or 80/20 for human_numbers as
in fast.ai's book). A character vocabulary is every character of the text; a word vocabulary is the words
of the training split, plus ``<unk>`` when validation holds words never seen in training.

A split of N tokens is cut into S equal contiguous segments of L = N // S tokens; process ``rank``
owns rows ``rank*B .. rank*B + B - 1``. Batch ``k`` of an epoch is ``x = seg[:, kT : kT+T]`` with targets
shifted by one, so each row continues exactly where the previous batch left off and the recurrent state
can be carried across batches. The batch is a pure function of the step number, which is what makes a
resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fastrnn.apps.errors import DataError, VocabularyError

#: Tiny Shakespeare, shipped inside the package; the default corpus.
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"

#: ``--data`` name of the generated word-level corpus (a file of that name is reached as ``./human_numbers``)
HUMAN_NUMBERS = "human_numbers"

#: fraction of the tokens used for training; the rest (the end of the stream) is the validation split
TRAIN_FRACTION = 0.9

#: human_numbers follows fast.ai's book: first 80% of the token stream trains, last 20% validates
HUMAN_NUMBERS_TRAIN_FRACTION = 0.8

TOKEN_KINDS = ("char", "word")

#: the word-vocabulary entry for validation words that never occur in the training split
UNK = "<unk>"

#: a word token after which sampled words start a new line (human_numbers ends every number with it)
LINE_END = "."


# ------------------------------------------------------------------------------------------- human_numbers

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """``n`` (1..9999) in English words, British style without "and": 101 -> "one hundred one"."""
    if not 1 <= n <= 9999:
        raise ValueError(f"number_words covers 1..9999, got {n}")
    words = []
    if n >= 1000:
        words += [_ONES[n // 1000], "thousand"]
        n %= 1000
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
    if n:
        words.append(_ONES[n])
    return " ".join(words)


def human_numbers_lines() -> list[str]:
    """fast.ai's human_numbers: train.txt (1..7,999) then valid.txt (8,001..9,999), one number per line."""
    return [number_words(n) for n in (*range(1, 8000), *range(8001, 10000))]


def human_numbers_text() -> str:
    """The lines joined with " . " into one stream, as the book does: 9,998 lines, 63,095 tokens, 30 words."""
    return " . ".join(human_numbers_lines())


# ----------------------------------------------------------------------------------------------- corpora


@dataclass(frozen=True)
class Corpus:
    """A text to train on and how to split it."""

    name: str  # for messages
    text: str
    train_fraction: float = TRAIN_FRACTION


def natural_tokens(data: str | None) -> str:
    """The token kind a corpus is meant for: ``word`` for human_numbers, ``char`` for anything else."""
    return "word" if data == HUMAN_NUMBERS else "char"


def load_corpus(data: str | None = None) -> Corpus:
    """The bundled Tiny Shakespeare (``None``), the generated human_numbers, or a UTF-8 file (see :func:`load_text`)."""
    if data is None:
        return Corpus("bundled Tiny Shakespeare", load_text(None))
    if data == HUMAN_NUMBERS:
        return Corpus("human_numbers (generated)", human_numbers_text(), HUMAN_NUMBERS_TRAIN_FRACTION)
    return Corpus(str(data), load_text(data))


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
    """A corpus's tokens (characters or words) in id order, with encode/decode.

    Args:
        tokens: the distinct tokens in id order: a string of characters, or a sequence of words.
        kind: ``char`` or ``word``.
    """

    def __init__(self, tokens: str | Sequence[str], kind: str = "char") -> None:
        if kind not in TOKEN_KINDS:
            raise ValueError(f"kind must be one of {', '.join(TOKEN_KINDS)}, got {kind!r}")
        tokens = list(tokens)
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"vocabulary {kind}s must be distinct")
        if kind == "char" and any(len(t) != 1 for t in tokens):
            raise ValueError("a character vocabulary holds single characters")
        if kind == "word" and any(not t or t != "".join(t.split()) for t in tokens):
            raise ValueError("a word vocabulary holds non-empty words without whitespace")
        self.kind = kind
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.unk = self.index.get(UNK) if kind == "word" else None

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The character vocabulary of ``text``: its distinct characters, sorted."""
        return cls("".join(sorted(set(text))))

    @classmethod
    def from_words(cls, train: Sequence[str], val: Sequence[str] = ()) -> Vocab:
        """The word vocabulary of a training split, sorted, with ``<unk>`` first if ``val`` has unseen words."""
        words = sorted(set(train))
        if UNK not in words and not set(val) <= set(words):
            words.insert(0, UNK)
        return cls(words, "word")

    @property
    def chars(self) -> str:
        """A character vocabulary as one string, in id order."""
        if self.kind != "char":
            raise AttributeError("a word vocabulary has no character string")
        return "".join(self.tokens)

    @property
    def unit(self) -> str:
        """``character`` or ``word``, for messages."""
        return "character" if self.kind == "char" else "word"

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.kind == self.kind and other.tokens == self.tokens

    def split(self, text: str) -> Sequence[str]:
        """``text`` as tokens: its characters, or its whitespace-separated words."""
        return tokenize(text, self.kind)

    def missing(self, text: str) -> list[str]:
        """Tokens of ``text`` that are not in the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(t for t in self.split(text) if t not in self.index))

    def encode(self, text: str, what: str = "text") -> Tensor:
        """Ids of ``text``'s tokens as an int64 tensor [number of tokens].

        Raises:
            VocabularyError: ``text`` holds tokens outside the vocabulary (named in the message).
        """
        bad = self.missing(text)
        if bad:
            shown = ", ".join(repr(t) for t in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise VocabularyError(
                f"{what} has {len(bad)} {self.unit}(s) outside the model's {len(self)}-{self.unit} vocabulary: {shown}"
            )
        return torch.tensor([self.index[t] for t in self.split(text)], dtype=torch.int64)

    def encode_tokens(self, tokens: Sequence[str]) -> Tensor:
        """Ids of ``tokens``, unknown words mapped to ``<unk>`` (a vocabulary without it needs them all known)."""
        unk = self.unk
        try:
            ids = [self.index[t] if unk is None else self.index.get(t, unk) for t in tokens]
        except KeyError as e:
            raise VocabularyError(f"{self.unit} {e.args[0]!r} is not in the vocabulary") from None
        return torch.tensor(ids, dtype=torch.int64)

    def separator(self, previous: str | None) -> str:
        """What goes between ``previous`` and the next token when rendering text.

        Characters follow each other directly; words are separated by a space, and a word after ``"."``
        starts a new line, so sampled human_numbers read one number per line. Rendered text splits back
        into the same words.
        """
        if self.kind == "char" or previous is None:
            return ""
        return "\n" if previous == LINE_END else " "

    def decode(self, ids: Tensor | list[int]) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        out, prev = [], None
        for i in ids:
            tok = self.tokens[i]
            out.append(self.separator(prev) + tok)
            prev = tok
        return "".join(out)

    def stored(self) -> str | list[str]:
        """The vocabulary as a checkpoint stores it: a string of characters, or a list of words."""
        return self.chars if self.kind == "char" else list(self.tokens)


def tokenize(text: str, kind: str) -> Sequence[str]:
    """``text`` as ``kind`` tokens: the string itself (its characters) or its whitespace-separated words."""
    if kind not in TOKEN_KINDS:
        raise ValueError(f"kind must be one of {', '.join(TOKEN_KINDS)}, got {kind!r}")
    return text if kind == "char" else text.split()


@dataclass
class Encoded:
    """A corpus encoded for training: the vocabulary and the ids of both splits."""

    vocab: Vocab
    train: Tensor  # int64 [N_train]
    val: Tensor  # int64 [N_val]

    @property
    def unknown_val(self) -> int:
        """Validation tokens mapped to ``<unk>``."""
        return 0 if self.vocab.unk is None else int((self.val == self.vocab.unk).sum())


def encode_corpus(corpus: Corpus, kind: str) -> Encoded:
    """Tokenise, build the vocabulary and split ``corpus`` (first ``train_fraction`` of the tokens trains).

    Raises:
        DataError: the text has fewer than two tokens (nothing to predict).
    """
    if kind == "char":
        vocab = Vocab.from_text(corpus.text)
        ids = vocab.encode(corpus.text, "data")
        train, val = split(ids, corpus.train_fraction)
        return Encoded(vocab, train, val)
    words = tokenize(corpus.text, "word")
    if len(words) < 2:
        what = "no words (only whitespace)" if not words else f"one word ({words[0][:40]!r})"
        raise DataError(f"{corpus.name} has {what}: a word-level model needs a text of at least two words "
                        f"to predict one from the other")
    n = int(len(words) * corpus.train_fraction)
    vocab = Vocab.from_words(words[:n], words[n:])
    return Encoded(vocab, vocab.encode_tokens(words[:n]), vocab.encode_tokens(words[n:]))


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
        unit: what a token is, for error messages (``characters`` or ``words``).

    Raises:
        DataError: a segment is shorter than one batch (T + 1 tokens).
    """

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 name: str = "train", unit: str = "characters") -> None:
        streams = batch_size * world_size
        seg = len(ids) // streams
        if seg < seq_len + 1:
            procs = f" x {world_size} processes" if world_size > 1 else ""
            raise DataError(
                f"text too short for one batch: the {name} split has {len(ids):,} {unit} but "
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
    def tokens_per_pass(self) -> int:
        """Tokens predicted by one pass of :meth:`chunks` on this process."""
        return self.batch_size * (self.segment - 1)


def val_streams(n_val: int, batch_size: int, seq_len: int, world_size: int) -> int:
    """Streams per process for the validation split: up to ``batch_size``, each at least T + 1 long."""
    return max(1, min(batch_size, n_val // (world_size * (seq_len + 1))))
