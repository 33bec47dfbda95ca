"""The training log (CSV, one row per logging interval) and the loss-curve PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from fastrnn.apps.files import atomic_open

COLUMNS = ("step", "epoch", "chars", "elapsed_s", "lr", "train_loss", "val_loss", "val_bpc", "chars_per_s",
           "grad_norm", "threads")


def bits(nats: float) -> float:
    """Nats per character to bits per character."""
    return nats / math.log(2)


class CsvLog:
    """Append rows to ``path``. On resume, rows past the checkpoint's step are dropped (they were not kept).

    Args:
        path: the CSV file.
        resume_step: the step being resumed from, or None to start a new file.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        rows = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with atomic_open(self.path, "w", newline="") as f:  # the kept rows replace the old file in one step
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        self._f = self.path.open("a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=COLUMNS, extrasaction="ignore")

    def write(self, **row) -> None:
        self._w.writerow({k: _fmt(v) for k, v in row.items()})
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def read_log(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def plot_losses(csv_path: str | Path, png_path: str | Path) -> Path:
    """Train and validation loss (nats/char) against step, with a bits/char axis, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(csv_path)
    tr = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    va = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if tr:
        ax.plot(*zip(*tr, strict=True), lw=1, alpha=0.8, label="train")
    if va:
        ax.plot(*zip(*va, strict=True), "o-", ms=3, lw=1.5, label="validation")
        best = min(v for _, v in va)
        ax.set_title(f"best validation loss {best:.3f} nats/char ({bits(best):.3f} bits/char)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    sec = ax.secondary_yaxis("right", functions=(bits, lambda b: b * math.log(2)))
    sec.set_ylabel("bits/char")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_open(png_path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return png_path
