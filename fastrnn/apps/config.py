"""The training configuration and its per-device defaults.

Every ``fastrnn train`` option defaults to ``None`` on the command line; the value is filled in from, in
order: the option itself, the checkpoint being resumed, the default for the device found
(:data:`CPU_DEFAULTS` or :data:`GPU_DEFAULTS`).

CPU default (fp32, torch's ATen kernels): 1 layer x 256 LSTM, 64-wide embedding, 32 streams x 128 steps,
AdamW lr 3e-3 -> 3e-4, a 4-minute budget. Measured on an idle 2-core EPYC: ~95k chars/s, i.e. up to ~20 passes over
the 1M-character corpus in 4 minutes, which this size turns into ~1.5 nats/char; a 384-unit layer runs ~3x
slower per character and sees too little text in the budget, and 64 streams per step halve the number of
updates for no gain in chars/s.

GPU default (one H100-class device, bf16 autocast): 3 layers x 768 LSTM, dropout 0.3, 128 streams x 256 steps,
lr 2e-3 -> 1e-4, a 4.5-minute budget: wide enough to keep the device busy, deep and dropped-out enough that
many passes over Tiny Shakespeare's 1M characters do not simply memorise it (``best.pt`` keeps the best
validation loss if it does). Chosen from experience with this corpus, not measured here (no GPU was at hand).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

#: settings that define the network or the stream layout; a resumed run must keep them
LOCKED = ("cell", "layers", "hidden", "embed", "batch_size", "seq_len")


@dataclass
class TrainConfig:
    """Everything that determines a training run's result (besides the data and the world size)."""

    data: str | None = None  # None: the bundled Tiny Shakespeare
    cell: str = "lstm"
    layers: int = 1
    hidden: int = 256
    embed: int = 64
    dropout: float = 0.0
    batch_size: int = 32  # streams per process
    seq_len: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4  # the cosine schedule ends here
    warmup: int = 100  # steps of linear warm-up
    weight_decay: float = 0.01
    clip: float = 1.0  # gradient-norm clipping threshold (0: off)
    steps: int = 100_000  # step budget; the schedule ends at min(steps, time budget)
    max_minutes: float = 4.0  # time budget of the training loop (0: none)
    val_every: int = 250
    log_every: int = 25
    seed: int = 1234
    dtype: str = "fp32"  # fp32 | bf16 (autocast, CUDA only)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


CPU_DEFAULTS = TrainConfig()

GPU_DEFAULTS = TrainConfig(
    layers=3, hidden=768, embed=128, dropout=0.3, batch_size=128, seq_len=256, lr=2e-3, min_lr=1e-4,
    warmup=200, weight_decay=0.05, steps=20_000, max_minutes=4.5, val_every=200, log_every=20, dtype="bf16",
)


def defaults_for(device_type: str) -> TrainConfig:
    """The default configuration for a device type (``cuda`` gets the GPU default, anything else the CPU one)."""
    return dataclasses.replace(GPU_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS)


def option_name(field: str) -> str:
    """The command-line option of a config field, for messages: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
