"""The training log (CSV, one row per logging interval) and the loss / accuracy PNG.

Losses are in nats per token (a character or a word), ``val_bits`` in bits per token, ``val_acc`` is the
next-token accuracy on the validation split.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from fastrnn.apps.files import atomic_open

COLUMNS = ("step", "epoch", "tokens", "elapsed_s", "lr", "train_loss", "val_loss", "val_bits", "val_acc",
           "tokens_per_s", "grad_norm", "threads")

#: column names of logs written before word-level models (read when a run from then is resumed)
_RENAMED = {"chars": "tokens", "val_bpc": "val_bits", "chars_per_s": "tokens_per_s"}


def bits(nats: float) -> float:
    """Nats per token to bits per token."""
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
                rows = [{_RENAMED.get(k, k): v for k, v in r.items()} for r in csv.DictReader(f)
                        if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
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


def plot_losses(csv_path: str | Path, png_path: str | Path, unit: str = "char") -> Path:
    """Train and validation loss (nats/token, with a bits axis) above validation accuracy, against step.

    Args:
        csv_path: the log written by :class:`CsvLog`.
        png_path: the PNG to write.
        unit: what a token is (``char`` or ``word``), for the axis labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(csv_path)
    tr = [(int(r["step"]), float(r["train_loss"])) for r in rows if r.get("train_loss")]
    va = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    ac = [(int(r["step"]), float(r["val_acc"])) for r in rows if r.get("val_acc")]
    fig, (ax, ax_acc) = plt.subplots(2, 1, figsize=(7, 6), dpi=110, sharex=True, height_ratios=(2, 1))
    if tr:
        ax.plot(*zip(*tr, strict=True), lw=1, alpha=0.8, label="train")
    if va:
        ax.plot(*zip(*va, strict=True), "o-", ms=3, lw=1.5, label="validation")
        best = min(v for _, v in va)
        title = f"best validation loss {best:.3f} nats/{unit} ({bits(best):.3f} bits/{unit})"
        if ac:
            title += f", best accuracy {max(a for _, a in ac):.3f}"
        ax.set_title(title)
    ax.set_ylabel(f"loss (nats/{unit})")
    sec = ax.secondary_yaxis("right", functions=(bits, lambda b: b * math.log(2)))
    sec.set_ylabel(f"bits/{unit}")
    ax.grid(alpha=0.3)
    ax.legend()
    if ac:
        ax_acc.plot(*zip(*ac, strict=True), "o-", ms=3, lw=1.5, color="C2", label="validation")
        ax_acc.legend()
    ax_acc.set_ylabel("next-token accuracy")
    ax_acc.set_xlabel("step")
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_open(png_path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return png_path
