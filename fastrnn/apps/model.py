"""The language-model network: Embedding -> recurrent module -> Linear, for character or word tokens.

Shapes: B batch, T time, V vocabulary, E embedding, H hidden, L layers.

Regularisation: dropout on the embedding output (``embed_dropout``), between recurrent layers and before the
output layer (``dropout``); weight tying shares the embedding matrix with the output layer (E == H). The
activation penalties (AR, TAR) are training-loss terms on the returned hidden output, see
:func:`activation_penalty`.

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


class LanguageModel(nn.Module):
    """Next-token language model over characters or words.

    Args:
        vocab_size: V.
        cell: ``lstm | gru | rnn_tanh | rnn_relu``.
        hidden: H, hidden units per layer.
        layers: L, stacked recurrent layers.
        embed: E, embedding width.
        dropout: dropout between recurrent layers and before the output layer.
        backend: ``auto | triton | reference`` (fastrnn) or ``torch`` (torch.nn's module).
        embed_dropout: dropout on the embedding output (the recurrent module's input).
        tie_weights: share the embedding matrix with the output layer's weight (needs E == H).
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden: int = 256, layers: int = 1, embed: int = 64,
                 dropout: float = 0.0, backend: str = "auto", embed_dropout: float = 0.0,
                 tie_weights: bool = False) -> None:
        super().__init__()
        if tie_weights and embed != hidden:
            raise AppError(f"--tie-weights needs --embed equal to --hidden (got embed {embed}, hidden {hidden})")
        self.cell = cell
        self.embed = nn.Embedding(vocab_size, embed)
        self.embed_drop = nn.Dropout(embed_dropout)
        self.rnn = make_rnn(cell, embed, hidden, layers, dropout, backend)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.head.weight = self.embed.weight  # [V, H] both

    def forward(self, x: Tensor, state: State | None = None,
                return_hidden: bool = False) -> tuple[Tensor, State] | tuple[Tensor, State, Tensor]:
        """Logits [B, T, V] for int64 ids ``x`` [B, T], and the final state (zeros when ``state`` is None).

        With ``return_hidden`` also the last layer's output [B, T, H] before dropout (for the AR/TAR penalty).
        """
        out, state = self.rnn(self.embed_drop(self.embed(x)), state)  # out [B, T, H]
        logits = self.head(self.drop(out))
        return (logits, state, out) if return_hidden else (logits, state)


def activation_penalty(hidden: Tensor, ar: float, tar: float) -> Tensor:
    """AR + TAR: ``ar * mean(h^2) + tar * mean((h_t - h_(t-1))^2)`` over the hidden output [B, T, H].

    Activation regularisation keeps the outputs small; temporal activation regularisation keeps them from
    jumping between steps (Merity et al., "Regularizing and Optimizing LSTM Language Models").
    """
    penalty = hidden.new_zeros(())
    if ar > 0:
        penalty = penalty + ar * hidden.float().pow(2).mean()
    if tar > 0 and hidden.shape[1] > 1:
        penalty = penalty + tar * (hidden[:, 1:] - hidden[:, :-1]).float().pow(2).mean()
    return penalty


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
