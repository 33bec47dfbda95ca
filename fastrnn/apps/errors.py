"""User errors of the char-LM app.

Every problem the user can cause (a bad data file, a prompt outside the vocabulary, a checkpoint that does
not fit) raises a subclass of :class:`AppError`. The CLI prints it as one line and exits with status 2; no
traceback is shown for these. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AppError(Exception):
    """A user error, reported by the CLI as ``fastrnn: error: <message>`` with exit status 2."""


class DataError(AppError):
    """The data file is missing, empty, binary, not UTF-8, or too short for one batch."""


class VocabularyError(AppError):
    """Text (e.g. a sampling prompt) holds characters that are not in the model's vocabulary."""


class CheckpointError(AppError):
    """A checkpoint is missing, corrupt, truncated, or not a fastrnn char-LM checkpoint."""


class ConfigMismatchError(CheckpointError):
    """A checkpoint does not match the requested configuration (architecture, vocabulary, batch layout)."""
