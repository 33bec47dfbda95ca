"""The training configuration and its defaults per device and corpus.

Every ``fastrnn train`` option defaults to ``None`` on the command line; the value is filled in from, in
order: the option itself, the checkpoint being resumed, the default for the device found and the corpus
(:func:`defaults_for`: :data:`CPU_DEFAULTS` or :data:`GPU_DEFAULTS`, or :data:`HUMAN_NUMBERS_DEFAULTS` for
the word-level human_numbers model on either device). ``--tokens`` itself defaults to the corpus's natural
kind: ``word`` for human_numbers, ``char`` for anything else.

CPU default (torch's ATen kernels, bf16 autocast on CPUs with bf16 instructions): 2 layers x 256 LSTM, dropout
0.1, 64-wide embedding, 32 streams x 64 steps, AdamW lr 3e-3 -> 3e-4, a 4-minute budget. Measured on the 2-core
EPYC (Zen 5, AVX512-BF16), validation loss at a fixed number of steps, throughput separately (README, "How the
defaults were chosen"): the old default, one fp32 layer of 256, stops at ~1.505 nats/char in its budget, and no
amount of training helps it (with bf16's extra speed it over-fits past ~20 passes: 1.52-1.55); a second layer
is what lowers the loss (1.453 in 5,000 steps), and bf16 autocast (~1.8x faster, +0.005 nats/char at equal steps)
and 64-step instead of 128-step batches (same loss per character, faster per character) pay for it. One
thread is nearly as fast as two for this model (the per-step matrices are small). Dropout 0.2 is worse than 0.1
at this length of training, a 2 x 192 model is faster but worse in the same time, and validating every 1,000
steps instead of 250 leaves more of the budget for training.

Without bf16 instructions emulated bf16 is slow, so such CPUs keep the one-layer fp32 model
(:data:`CPU_FP32_DEFAULTS`, ~1.505 nats/char in 4 minutes).

human_numbers default (word tokens, CPU and CUDA): 2 layers x 64 GRU with tied embedding and output weights,
dropout 0.3 (output) and 0.1 (embedding), AR 2, TAR 1, weight decay 0.5, 64 streams x 16 words, lr 1e-2 ->
1e-4, 3,000 steps (~60 passes) capped at 2.5 minutes. The validation split (8,085-9,999) starts numbers with
"eight"/"nine thousand", which training (1-8,084) shows in 84 lines or never: the model must copy the thousands
word from the previous line, and whether it learns that generally or memorises each thousand decides accuracy.
Measured at 3,000 steps over seeds: weight decay 0.1 leaves it to chance (LSTM 0.84-0.94, GRU 0.89-0.905);
weight decay 0.5 makes the GRU generalise on every seed tried (0.956-0.979), not the LSTM (0.825 on one seed).

GPU default (one H100-class device, bf16 autocast): 3 layers x 768 LSTM, dropout 0.3, 128 streams x 256 steps,
lr 2e-3 -> 1e-4, a 4.5-minute budget: wide enough to keep the device busy, deep and dropped-out enough that
many passes over Tiny Shakespeare's 1M characters do not simply memorise it (``best.pt`` keeps the best
validation loss if it does). Chosen from experience with this corpus, not measured here (no GPU was at hand).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import torch

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
    dtype: str = "fp32"  # fp32 | bf16 (autocast; CUDA, or a CPU)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: CPU default where the CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast pays for a second layer
CPU_DEFAULTS = TrainConfig(layers=2, dropout=0.1, seq_len=64, dtype="bf16", val_every=1000)

#: CPU default without native bf16 (emulated bf16 is slow): one fp32 layer, the default before bf16 on CPU
CPU_FP32_DEFAULTS = TrainConfig()

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
    elif device_type == "cuda":
        base = GPU_DEFAULTS
    else:
        base = CPU_DEFAULTS if cpu_has_bf16() else CPU_FP32_DEFAULTS
    return dataclasses.replace(base, data=data, tokens=tokens)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX), so that bf16 autocast is faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers: absent on other builds and architectures
        return False


def option_name(field: str) -> str:
    """The command-line option of a config field, for messages: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
