"""Result rows: their columns, the device/version columns, the CSV writer that keeps every finished row, the reader.

A row is written the moment it is measured: one ``write`` of the whole line, then ``flush`` and ``os.fsync``,
so a run killed at any point leaves a file of complete rows under its header. Rows that produced no timing
(a provider that does not support the case, failed the correctness gate, raised, or hung) are rows too, with
empty numbers, their ``status`` and the reason in ``note``.

This module does not import torch at module level: ``--report`` reads CSVs without it.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
import re
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

#: the columns of the protocol, in order
COLUMNS = (
    "bench", "cell", "B", "T", "I", "H", "layers", "bidir", "dtype", "mode", "provider",
    "ms_p50", "ms_p20", "ms_p80", "peak_mb", "tflops", "us_per_step", "ratio_vs_cudnn",
    "device", "torch", "triton", "cuda", "fastrnn_commit", "date",
)
#: fastrnn's two extra columns after them: status (ok | skipped | wrong | error | timeout) and note (why, or how
#: it was timed)
EXTRA_COLUMNS = ("status", "note")
CSV_COLUMNS = COLUMNS + EXTRA_COLUMNS
STATUSES = ("ok", "skipped", "wrong", "error", "timeout")
#: the columns that identify a row: a rerun with --resume skips rows whose key is already in the file
KEY_COLUMNS = ("bench", "cell", "B", "T", "I", "H", "layers", "bidir", "dtype", "mode", "provider")

_INT_COLUMNS = ("B", "T", "I", "H", "layers")
_FLOAT_COLUMNS = ("ms_p50", "ms_p20", "ms_p80", "peak_mb", "tflops", "us_per_step", "ratio_vs_cudnn")

CPU_DEVICE_LABEL = "cpu (smoke run, perf_counter timer, not a benchmark)"
#: the fastrnn_commit column where the tree has no .git (a copy sent to a GPU machine)
COMMIT_ENV_VAR = "FASTRNN_COMMIT"


def environment(device) -> dict[str, str]:
    """The device / version / commit / date columns shared by every row of a run."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else CPU_DEVICE_LABEL
    commit = os.environ.get(COMMIT_ENV_VAR, "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda or "",
            "fastrnn_commit": commit or "unknown", "date": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def make_row(case, dtype: str, mode: str, provider: str, env: dict, status: str = "ok", note: str = "",
             **numbers) -> dict:
    """A row of :data:`CSV_COLUMNS`: the case's columns, ``numbers`` (ms_p50, ...; missing ones None), ``env``."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    unknown = set(numbers) - set(_FLOAT_COLUMNS)
    if unknown:
        raise ValueError(f"not number columns: {sorted(unknown)}")
    row = {"bench": case.bench, "cell": case.cell, "B": case.B, "T": case.T, "I": case.I, "H": case.H,
           "layers": case.layers, "bidir": case.bidir, "dtype": dtype, "mode": mode, "provider": provider}
    row.update({c: numbers.get(c) for c in _FLOAT_COLUMNS})
    row.update({c: env.get(c, "") for c in ("device", "torch", "triton", "cuda", "fastrnn_commit", "date")})
    row.update(status=status, note=" ".join(note.split()))  # one line
    return row


def row_key(row: dict) -> tuple:
    return tuple(str(row[c]) for c in KEY_COLUMNS)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def device_slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``; a CPU smoke run -> ``cpu-smoke``."""
    if name == CPU_DEVICE_LABEL:
        return "cpu-smoke"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def result_path(out_dir: Path, device_name: str, date: str, resume: bool = False) -> Path:
    """``<out>/<date>-<device-slug>.csv``. A new run never overwrites: ``-2``, ``-3``, ... are appended to the
    name; with ``resume`` the newest existing file of that date and device is returned (appended to)."""
    stem = f"{date[:10]}-{device_slug(device_name)}"
    path, previous, n = out_dir / f"{stem}.csv", None, 2
    while path.exists():
        previous, path, n = path, out_dir / f"{stem}-{n}.csv", n + 1
    return previous if resume and previous is not None else path


class RowWriter:
    """Appends rows to a CSV, each flushed and fsynced before :meth:`write` returns. Thread-safe (the run's
    watchdog writes from its own thread). A new or empty file gets the header; an existing file must have
    :data:`CSV_COLUMNS` as its header."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="") as f:
                header = tuple(next(csv.reader(f), ()))
            if header != CSV_COLUMNS:
                raise ValueError(f"{self.path}: its header is not this harness's columns; write to a new file")
            self._f = open(self.path, "a", newline="")
        else:
            self._f = open(self.path, "w", newline="")
            self._write_line(CSV_COLUMNS)

    def _write_line(self, cells: Iterable[str]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(list(cells))
        self._f.write(buf.getvalue())  # the whole line in one write
        self._f.flush()
        os.fsync(self._f.fileno())

    def write(self, row: dict) -> None:
        with self._lock:
            self._write_line(_text(row[c]) for c in CSV_COLUMNS)

    def close(self) -> None:
        with self._lock:
            self._f.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse(name: str, text: str):
    if name in _INT_COLUMNS:
        return int(text)
    if name in _FLOAT_COLUMNS:
        return float(text) if text else None
    if name == "bidir":
        return text == "True"
    return text


def read_rows(path: Path) -> list[dict]:
    """The rows of a result CSV, numbers parsed (empty -> None). A CSV of the protocol's columns only (no
    status/note) reads as status ``ok``. A last line cut short (a writer killed mid-line) is dropped.

    Raises:
        ValueError: a header without the protocol's columns.
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not set(COLUMNS) <= set(header):
            raise ValueError(f"{path}: not a result CSV (its header lacks {sorted(set(COLUMNS) - set(header or ()))})")
        rows = []
        for cells in reader:
            if len(cells) != len(header):
                continue
            row = {name: _parse(name, text) for name, text in zip(header, cells, strict=True)}
            row.setdefault("status", "ok")
            row.setdefault("note", "")
            rows.append(row)
    return rows
