"""Checkpoint files: atomic writes and loads that never execute code.

A checkpoint is a ``torch.save``-d dict of plain types and tensors only, so ``torch.load(weights_only=True)``
reads it:

    format      "fastrnn-charlm"          version   int
    config      TrainConfig as a dict     vocab     str (the characters, in id order)
    model       state_dict                optimizer AdamW state_dict
    step, elapsed (training seconds so far), best_val (float | None), world_size
    streams     per rank: {"state": [h] | [h, c] | [], "rng": uint8 tensor, "cuda_rng": uint8 tensor | absent}
    data_sha256 fingerprint of the training text
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastrnn.apps.errors import CheckpointError
from fastrnn.apps.files import atomic_open

FORMAT = "fastrnn-charlm"
VERSION = 1
_REQUIRED = ("config", "vocab", "model", "step")


def save(obj: dict, path: str | Path) -> None:
    """Write ``obj`` (plus the format tag) to ``path`` atomically (see :mod:`fastrnn.apps.files`)."""
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **obj}, f)


def load(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save`, on the CPU, with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated or corrupt, or not a char-LM checkpoint.
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
        raise CheckpointError(f"not a fastrnn char-LM checkpoint: {path}")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt.get('version')}, expected {VERSION}")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    if not isinstance(ckpt["vocab"], str) or not ckpt["vocab"] or not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"checkpoint {path} has a malformed vocab or config")
    return ckpt
