"""Atomic file writes: a temp file in the target's directory, fsync, then ``os.replace``.

A reader (or a crash, or Ctrl-C) sees either the old file or the new one, never a half-written one; at worst a
stray ``.<name>.*.tmp`` file is left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temp file for writing that replaces ``path`` when the ``with`` block ends without an exception.

    Args:
        path: the file to (re)place; its directory is created if needed.
        mode: ``"wb"`` or ``"w"``; ``kwargs`` go to :func:`os.fdopen` (e.g. ``newline=""``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
