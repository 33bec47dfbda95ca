"""The char-LM network: Embedding -> recurrent module -> Linear.

Shapes: B batch, T time, V vocabulary, E embedding, H hidden, L layers.

The recurrent module is ``fastrnn.LSTM/GRU/RNN`` with the requested ``backend``, or for ``backend="torch"``
torch.nn's own module. Both have the same parameter names, so a checkpoint trained with one loads into the
other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastrnn.apps.errors import AppError
from fastrnn.backend import interpreting

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
BACKENDS = ("auto", "triton", "reference", "torch")

#: recurrent state: (h, c) for LSTM, h for GRU/RNN; each [L, B, H]
State = Tensor | tuple[Tensor, Tensor]


def check_backend_device(backend: str, device: torch.device) -> None:
    """Raise a one-line :class:`AppError` for ``--backend triton`` off CUDA (unless the interpreter is on)."""
    if backend == "triton" and device.type != "cuda" and not interpreting():
        raise AppError(f"--backend triton needs a CUDA device (running on {device.type}); use --backend auto, "
                       f"or set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter (slow)")


def make_rnn(cell: str, input_size: int, hidden: int, layers: int, dropout: float, backend: str) -> nn.Module:
    """A batch-first recurrent module; ``backend="torch"`` gives torch.nn's, anything else fastrnn's."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    kwargs: dict = {"num_layers": layers, "dropout": dropout if layers > 1 else 0.0, "batch_first": True}
    if backend == "torch":
        lib = nn
    else:
        import fastrnn as lib

        kwargs["backend"] = backend
    if cell == "lstm":
        return lib.LSTM(input_size, hidden, **kwargs)
    if cell == "gru":
        return lib.GRU(input_size, hidden, **kwargs)
    return lib.RNN(input_size, hidden, nonlinearity=cell.removeprefix("rnn_"), **kwargs)


class CharLM(nn.Module):
    """Character language model.

    Args:
        vocab_size: V.
        cell: ``lstm | gru | rnn_tanh | rnn_relu``.
        hidden: H, hidden units per layer.
        layers: L, stacked recurrent layers.
        embed: E, embedding width.
        dropout: dropout between recurrent layers and before the output layer.
        backend: ``auto | triton | reference`` (fastrnn) or ``torch`` (torch.nn's module).
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden: int = 256, layers: int = 1, embed: int = 64,
                 dropout: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        self.cell = cell
        self.embed = nn.Embedding(vocab_size, embed)
        self.rnn = make_rnn(cell, embed, hidden, layers, dropout, backend)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits [B, T, V] for int64 ids ``x`` [B, T], and the final state (zeros when ``state`` is None)."""
        out, state = self.rnn(self.embed(x), state)  # out [B, T, H]
        return self.head(self.drop(out)), state


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a batch boundary (truncated BPTT), keeping the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def state_to(state: State | None, device: torch.device | str) -> State | None:
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.to(device) for s in state)
    return state.to(device)
