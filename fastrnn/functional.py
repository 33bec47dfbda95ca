"""Functional API: whole-sequence RNN/LSTM/GRU and single-step cells.

The modules in :mod:`fastrnn.modules` validate their arguments like torch.nn and call these functions.
Everything here is cell-agnostic except the tiny per-cell wrappers at the bottom: the stacking of layers
and directions, dropout between layers, PackedSequence handling and dtype policy live once, in
:func:`rnn`, and only the per-direction recurrence differs between backends (see :mod:`fastrnn.backend`).

Weights are given per (layer, direction), in torch.nn's order (layer 0 forward, layer 0 reverse,
layer 1 forward, ...), each as a tuple ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` with ``None`` for the parts a
module does not have (biases when ``bias=False``; ``w_hr`` unless LSTM with ``proj_size > 0``):

    w_ih [G, I_l]   w_hh [G, P]   b_ih [G]   b_hh [G]   w_hr [P, H]
    G = gates * H (4 LSTM, 3 GRU, 1 RNN), P = proj_size or H, I_l = I for layer 0 else P * directions
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastrnn import backend as _backend
from fastrnn import reference

LayerWeights = tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]


def _recurrence_impl(impl: str):
    if impl == "triton":
        from fastrnn import ops  # imported lazily: keeps `import fastrnn` free of triton compilation work

        return ops.recurrence
    return reference.recurrence


def _flat_weights(weights: Sequence[LayerWeights]) -> list[Tensor]:
    """torch.nn's flat parameter list (the order torch's native RNN ops expect)."""
    return [w for layer in weights for w in layer if w is not None]


def _torch_native(mode, input, batch_sizes, hx, weights, has_biases, num_layers, dropout, training,
                  bidirectional, batch_first):
    """Run the whole stack with PyTorch's own RNN operator (cuDNN / ATen), as torch.nn does."""
    fn = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}[mode]
    hidden = hx if mode == "lstm" else hx[0]
    flat = _flat_weights(weights)
    if batch_sizes is not None:
        result = fn(input, batch_sizes, hidden, flat, has_biases, num_layers, dropout, training, bidirectional)
    else:
        result = fn(input, hidden, flat, has_biases, num_layers, dropout, training, bidirectional, batch_first)
    return result[0], tuple(result[1:])


def _input_projection(
    mode: str, x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, impl: str
) -> Tensor:
    """x @ W_ih^T plus the biases the recurrence does not need apart, as one GEMM.

    LSTM and RNN add both biases here (summed first, so the GEMM adds them and autocast keeps gx in its
    lower precision); GRU keeps b_hh apart because its candidate gate scales (h W_hn^T + b_hn) by r. The
    ``triton`` backend's fp32 GEMMs follow cuDNN's TF32 switch (:mod:`fastrnn.ops.projection`).
    """
    bias = b_ih if b_hh is None or b_ih is None or mode == "gru" else b_ih + b_hh
    if impl == "triton":
        from fastrnn.ops import projection

        return projection.linear(x, w_ih, bias)
    return F.linear(x, w_ih, bias)


def _stack(mode, x, h0, c0, weights, lengths, num_layers, dropout, training, bidirectional, impl):
    """Layers × directions over a time-major padded input x [T, B, I]. Returns (y, h_n, c_n)."""
    recurrence = _recurrence_impl(impl)
    directions = 2 if bidirectional else 1
    h_n, c_n = [], []
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            w_ih, w_hh, b_ih, b_hh, w_hr = weights[k]
            gx = _input_projection(mode, layer_input, w_ih, b_ih, b_hh, impl)  # [T, B, G]: one GEMM for all T
            y, h, c = recurrence(
                mode, gx, h0[k], None if c0 is None else c0[k], w_hh,
                b_hh if mode == "gru" else None, w_hr, lengths, direction == 1,
            )
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    return layer_input, torch.stack(h_n), None if c0 is None else torch.stack(c_n)


def rnn(
    mode: str,
    input: Tensor | PackedSequence,
    hx: Tensor | tuple[Tensor, Tensor],
    weights: Sequence[LayerWeights],
    *,
    num_layers: int = 1,
    dropout: float = 0.0,
    training: bool = False,
    bidirectional: bool = False,
    batch_first: bool = False,
    backend: str | None = None,
) -> tuple[Tensor | PackedSequence, Tensor | tuple[Tensor, Tensor]]:
    """Run a multi-layer (bi)directional RNN of kind ``mode`` over a sequence.

    Args:
        mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        input: [T, B, I] ([B, T, I] with ``batch_first``), or a PackedSequence.
        hx: h0 [L*D, B, P], or ``(h0, c0)`` with c0 [L*D, B, H] for LSTM; batch in the caller's order
            (for a PackedSequence the permutation to sorted order is applied here).
        weights: per (layer, direction) ``(w_ih, w_hh, b_ih, b_hh, w_hr)``; see the module docstring.
        num_layers, dropout, training, bidirectional, batch_first: as in torch.nn.
        backend: ``auto | reference | triton | torch``; None reads $FASTRNN_BACKEND (default ``auto``).

    Returns:
        ``(output, h_n)`` or ``(output, (h_n, c_n))`` for LSTM, exactly as torch.nn returns them:
        output [T, B, D*P] (or batch-first, or a PackedSequence), h_n [L*D, B, P], c_n [L*D, B, H].
    """
    packed = isinstance(input, PackedSequence)
    data = input.data if packed else input
    if data.size(1 if batch_first and not packed else 0) == 0:  # as torch's RNN operators (an empty batch is fine)
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    h0, c0 = (hx[0], hx[1]) if mode == "lstm" else (hx, None)
    if packed and input.sorted_indices is not None:
        h0 = h0.index_select(1, input.sorted_indices)
        c0 = None if c0 is None else c0.index_select(1, input.sorted_indices)
    impl = _backend.resolve(backend, data.device, data.dtype)
    has_biases = weights[0][2] is not None

    if impl == "torch":
        out, hidden = _torch_native(
            mode, data, input.batch_sizes if packed else None, (h0,) if c0 is None else (h0, c0), weights,
            has_biases, num_layers, dropout, training, bidirectional, batch_first,
        )
        h_n, c_n = hidden[0], (hidden[1] if mode == "lstm" else None)
    else:
        out_dtype = data.dtype
        if packed:
            x, lengths = pad_packed_sequence(PackedSequence(data, input.batch_sizes))
            lengths = lengths.to(data.device)
        else:
            x, lengths = (data.transpose(0, 1) if batch_first else data), None
        if impl == "reference":  # the oracle computes everything, input projections included, in fp32+
            cdt = reference.compute_dtype(out_dtype)
            x, h0 = x.to(cdt), h0.to(cdt)
            c0 = None if c0 is None else c0.to(cdt)
            weights = [tuple(None if w is None else w.to(cdt) for w in layer) for layer in weights]
        y, h_n, c_n = _stack(mode, x, h0, c0, weights, lengths, num_layers, dropout, training, bidirectional,
                             impl)
        if impl == "reference":
            y, h_n = y.to(out_dtype), h_n.to(out_dtype)
            c_n = None if c_n is None else c_n.to(out_dtype)
        if packed:
            out = pack_padded_sequence(y, lengths.cpu(), enforce_sorted=True).data
        else:
            out = y.transpose(0, 1) if batch_first else y

    if packed:
        out = PackedSequence(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        if input.unsorted_indices is not None:
            h_n = h_n.index_select(1, input.unsorted_indices)
            c_n = None if c_n is None else c_n.index_select(1, input.unsorted_indices)
    return out, ((h_n, c_n) if mode == "lstm" else h_n)


def lstm(input, hx, weights, **kwargs):
    """LSTM over a sequence: :func:`rnn` with ``mode="lstm"``; ``hx = (h0, c0)``; returns ``(out, (h_n, c_n))``."""
    return rnn("lstm", input, hx, weights, **kwargs)


def gru(input, hx, weights, **kwargs):
    """GRU over a sequence: :func:`rnn` with ``mode="gru"``; returns ``(out, h_n)``."""
    return rnn("gru", input, hx, weights, **kwargs)


def rnn_tanh(input, hx, weights, **kwargs):
    """Elman RNN (tanh) over a sequence: :func:`rnn` with ``mode="rnn_tanh"``."""
    return rnn("rnn_tanh", input, hx, weights, **kwargs)


def rnn_relu(input, hx, weights, **kwargs):
    """Elman RNN (relu) over a sequence: :func:`rnn` with ``mode="rnn_relu"``."""
    return rnn("rnn_relu", input, hx, weights, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Single steps (the *Cell modules)
# ---------------------------------------------------------------------------------------------------------

_TORCH_CELLS = {
    "lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell, "rnn_relu": torch.rnn_relu_cell,
}


def check_cell_args(input: Tensor, hx: Sequence[Tensor], w_ih: Tensor, hidden_size: int) -> None:
    """The checks torch's cell operators make, with the same exception class (RuntimeError)."""
    if input.size(1) != w_ih.size(1):
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {w_ih.size(1)}"
        )
    for i, h in enumerate(hx):
        if input.size(0) != h.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} batch size {h.size(0)}")
        if h.size(1) != hidden_size:
            raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {h.size(1)}, expected {hidden_size}")
    for name, t in (("hx", hx[0]), ("weight_ih", w_ih)):
        if t.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
            raise RuntimeError(f"expected {name} dtype {input.dtype} (the input's), got {t.dtype}")


def cell(
    mode: str,
    input: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    *,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """One time step of a cell of kind ``mode`` for a batch.

    Args:
        input: [B, I]. hx: h [B, H], or ``(h, c)`` for LSTM. w_ih [G, I], w_hh [G, H], b_ih/b_hh [G] or None.
        backend: as for :func:`rnn`.

    Returns:
        h' [B, H], or ``(h', c')`` for LSTM.
    """
    states = tuple(hx) if mode == "lstm" else (hx,)
    if mode == "lstm" and len(states) != 2:
        raise RuntimeError(f"lstm_cell expects two hidden states (h, c) in hx, got {len(states)}")
    check_cell_args(input, states, w_ih, w_hh.size(1))
    impl = _backend.resolve(backend, input.device, input.dtype)
    if impl == "torch":
        return _TORCH_CELLS[mode](input, states if mode == "lstm" else hx, w_ih, w_hh, b_ih, b_hh)
    out_dtype = input.dtype
    if impl == "reference":
        cdt = reference.compute_dtype(out_dtype)
        input, w_ih, w_hh = input.to(cdt), w_ih.to(cdt), w_hh.to(cdt)
        b_ih = None if b_ih is None else b_ih.to(cdt)
        b_hh = None if b_hh is None else b_hh.to(cdt)
        states = tuple(s.to(cdt) for s in states)
    gx = _input_projection(mode, input, w_ih, b_ih, b_hh, impl)
    _, h, c = _recurrence_impl(impl)(
        mode, gx.unsqueeze(0), states[0], states[1] if mode == "lstm" else None, w_hh,
        b_hh if mode == "gru" else None, None, None, False,
    )
    h = h.to(out_dtype)
    return (h, c.to(out_dtype)) if mode == "lstm" else h


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One LSTM step: :func:`cell` with ``mode="lstm"``; ``hx = (h, c)``; returns ``(h', c')``."""
    return cell("lstm", input, hx, w_ih, w_hh, b_ih, b_hh, backend=backend)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One GRU step: :func:`cell` with ``mode="gru"``."""
    return cell("gru", input, hx, w_ih, w_hh, b_ih, b_hh, backend=backend)


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One Elman RNN (tanh) step."""
    return cell("rnn_tanh", input, hx, w_ih, w_hh, b_ih, b_hh, backend=backend)


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, backend=None):
    """One Elman RNN (relu) step."""
    return cell("rnn_relu", input, hx, w_ih, w_hh, b_ih, b_hh, backend=backend)
