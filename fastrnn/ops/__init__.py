"""Triton-backed recurrences: launchers and ``torch.library`` custom ops, one module per cell.

``recurrence`` is the entry point the functional layer calls for the ``triton`` backend; it has the
signature, semantics and return of :func:`fastrnn.reference.recurrence` and is differentiable w.r.t.
gx, h0, c0, w_hh, b_hh and w_hr through the ops ``fastrnn::lstm``, ``fastrnn::gru``, ``fastrnn::rnn``
(and their ``*_backward`` ops), registered by the submodules of the same names. A backward run with
``create_graph=True`` is a differentiable recompute instead (:mod:`fastrnn.ops._second_order`), so
second-order gradients work. ``launch_counts`` counts kernel launches per kernel name (tests use it to prove
the Triton path ran). Which kernels run (tiled or persistent) is decided in :mod:`fastrnn.ops.strategy`:
``use_strategy(...)``, else ``$FASTRNN_STRATEGY``.

Precision: state and accumulation in fp32. fp16/bf16 inputs read the recurrent matmul operands in their own
dtype (tensor cores) with fp32 accumulation; fp32 inputs follow ``torch.backends.cudnn.allow_tf32`` as cuDNN's
RNNs do: TF32 tensor cores when it is set (torch's default), exact fp32 products otherwise, which track the
fp64 reference to ~1e-5 (:func:`fastrnn.ops.strategy.precision`). Weights of another dtype than gx
(autocast) are cast to that matmul dtype; gradients come back in each input's own dtype.
"""

import torch
from torch import Tensor

from fastrnn.ops import gru as _gru
from fastrnn.ops import lstm as _lstm
from fastrnn.ops import rnn as _rnn
from fastrnn.ops import strategy as _strategy
from fastrnn.ops._launch import launch_counts, needs_save
from fastrnn.ops.strategy import use_strategy

__all__ = ["launch_counts", "recurrence", "use_strategy"]


def recurrence(
    mode: str,
    gx: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run one direction of one layer over time with the Triton kernels.

    Args:
        mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        gx: [T, B, G] input projection (with b_ih + b_hh for LSTM/RNN, b_ih only for GRU).
        h0: [B, P] initial hidden state. c0: [B, H] initial cell state (LSTM), else None.
        w_hh: [G, P] recurrent weight. b_hh: [G] recurrent bias, GRU only.
        w_hr: [P, H] LSTM projection weight, or None.
        lengths: [B] int64 valid length of each sequence (steps t >= lengths[b] freeze the state and output
            zeros; the reverse direction starts at lengths[b] - 1), or None.
        reverse: run from t = T-1 down to 0.

    Returns:
        (y [T, B, P], h_n [B, P], c_n [B, H] or None), in gx's dtype.
    """
    if lengths is not None:
        lengths = lengths.to(device=gx.device, dtype=torch.int64)
    save = needs_save(gx, h0, c0, w_hh, b_hh, w_hr)
    strategy = _strategy.requested()
    if mode == "lstm":
        if c0 is None:
            raise ValueError("recurrence: mode 'lstm' needs c0")
        y, h_n, c_n = _lstm.lstm(gx, h0, c0, w_hh, w_hr, lengths, reverse, save, strategy)[:3]
        return y, h_n, c_n
    if mode == "gru":
        y, h_n = _gru.gru(gx, h0, w_hh, b_hh, lengths, reverse, save, strategy)[:2]
        return y, h_n, None
    if mode in ("rnn_tanh", "rnn_relu"):
        y, h_n = _rnn.rnn(gx, h0, w_hh, lengths, reverse, mode[4:], save, strategy)[:2]
        return y, h_n, None
    raise ValueError(f"recurrence: mode must be one of 'lstm', 'gru', 'rnn_tanh', 'rnn_relu', got {mode!r}")
