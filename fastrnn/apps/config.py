"""The training configuration and its defaults per device and corpus.

Every ``fastrnn train`` option defaults to ``None`` on the command line; the value is filled in from, in
order: the option itself, the checkpoint being resumed, the default for the device found and the corpus
(:func:`defaults_for`: :data:`CPU_DEFAULTS` or :data:`GPU_DEFAULTS`, or :data:`HUMAN_NUMBERS_DEFAULTS` for
the word-level human_numbers model on either device). ``--tokens`` itself defaults to the corpus's natural
kind: ``word`` for human_numbers, ``char`` for anything else.

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

from fastrnn.apps.data import HUMAN_NUMBERS, natural_tokens

#: settings that define the network, its tokens or the stream layout; a resumed run must keep them
LOCKED = ("tokens", "cell", "layers", "hidden", "embed", "tie_weights", "batch_size", "seq_len")


@dataclass
class TrainConfig:
    """Everything that determines a training run's result (besides the data and the world size)."""

    data: str | None = None  # None: the bundled Tiny Shakespeare; "human_numbers": generated
    tokens: str = "char"  # char | word (whitespace-separated)
    cell: str = "lstm"
    layers: int = 1
    hidden: int = 256
    embed: int = 64
    dropout: float = 0.0  # between recurrent layers and before the output layer
    embed_dropout: float = 0.0  # on the embedding output
    tie_weights: bool = False  # output layer shares the embedding matrix (embed == hidden)
    ar: float = 0.0  # activation regularisation: ar * mean(h^2)
    tar: float = 0.0  # temporal activation regularisation: tar * mean((h_t - h_(t-1))^2)
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


#: the word-level human_numbers model, on CPU and CUDA alike (far too small to keep a GPU busy)
HUMAN_NUMBERS_DEFAULTS = TrainConfig(
    tokens="word", cell="gru", layers=2, hidden=64, embed=64, tie_weights=True, dropout=0.3, embed_dropout=0.1,
    ar=2.0, tar=1.0, weight_decay=0.5, batch_size=64, seq_len=16, lr=1e-2, min_lr=1e-4, warmup=100, steps=3000,
    max_minutes=2.5, val_every=250, log_every=25,
)


def defaults_for(device_type: str, data: str | None = None, tokens: str | None = None) -> TrainConfig:
    """The default configuration for a device type, corpus and token kind (default: the corpus's natural kind).

    human_numbers with word tokens gets :data:`HUMAN_NUMBERS_DEFAULTS`; anything else ``cuda`` gets the GPU
    default and other devices the CPU one.
    """
    tokens = tokens or natural_tokens(data)
    if data == HUMAN_NUMBERS and tokens == "word":
        base = HUMAN_NUMBERS_DEFAULTS
    else:
        base = GPU_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS
    return dataclasses.replace(base, data=data, tokens=tokens)


def option_name(field: str) -> str:
    """The command-line option of a config field, for messages: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
