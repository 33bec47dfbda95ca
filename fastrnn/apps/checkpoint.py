"""Checkpoint files: atomic writes and loads that never execute code.

A checkpoint is a ``torch.save``-d dict of plain types and tensors only, so ``torch.load(weights_only=True)``
reads it:

    format      "fastrnn-charlm"          version   int (2; version 1, from before word-level models, is read as char)
    config      TrainConfig as a dict (``tokens``: char | word; absent in version 1, meaning char)
    vocab       str (the characters, in id order) for char models, list[str] (the words, in id order) for word models
    model       state_dict                optimizer AdamW state_dict
    step, elapsed (training seconds so far), best_val (float | None), world_size
    streams     per rank: {"state": [h] | [h, c] | [], "rng": uint8 tensor, "cuda_rng": uint8 tensor | absent}
    data_sha256 fingerprint of the training text
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastrnn.apps.data import Vocab
from fastrnn.apps.errors import CheckpointError
from fastrnn.apps.files import atomic_open

FORMAT = "fastrnn-charlm"  # the tag predates word-level models; kept so that older checkpoints still load
VERSION = 2
READABLE_VERSIONS = (1, 2)
_REQUIRED = ("config", "vocab", "model", "step")


def save(obj: dict, path: str | Path) -> None:
    """Write ``obj`` (plus the format tag) to ``path`` atomically (see :mod:`fastrnn.apps.files`)."""
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **obj}, f)


def load(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save`, on the CPU, with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated or corrupt, or not a fastrnn language-model
            checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint is corrupt or truncated: {path} ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"not a fastrnn language-model checkpoint: {path}")
    if ckpt.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt.get('version')}, expected "
                              f"{' or '.join(map(str, READABLE_VERSIONS))}")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"checkpoint {path} has a malformed config")
    vocab_of(ckpt, path)
    return ckpt


def vocab_of(ckpt: dict, path: str | Path = "checkpoint") -> Vocab:
    """The vocabulary of a loaded checkpoint, of the token kind its config names.

    Raises:
        CheckpointError: the stored vocabulary does not fit the token kind, or is empty or malformed.
    """
    kind = ckpt["config"].get("tokens", "char")
    stored = ckpt["vocab"]
    ok = (kind == "char" and isinstance(stored, str)) or (
        kind == "word" and isinstance(stored, list) and all(isinstance(w, str) for w in stored))
    if ok and stored:
        try:
            return Vocab(stored, kind)
        except ValueError:
            pass
    raise CheckpointError(f"checkpoint {path} has a malformed vocab for tokens={kind!r}")
