"""Pure-PyTorch cells and the per-direction recurrence loop.

This module is the oracle every other path is tested against, and fastrnn's ``reference`` backend.
It computes in float32 (float64 when the inputs are float64) whatever the input dtype, and casts the
results back, which is the precision contract the Triton kernels keep too.

Shapes (one layer, one direction):
    T time, B batch, H hidden, P = proj_size or H (size of h), G = gates * H
    gx      [T, B, G]  input projection x @ W_ih^T + b_ih, plus b_hh for LSTM/RNN (GRU keeps b_hh apart,
                       because its candidate gate scales h @ W_hn^T + b_hn by r)
    h0      [B, P]     c0 [B, H] (LSTM only)
    w_hh    [G, P]     b_hh [G] (GRU only)     w_hr [P, H] (LSTM with proj_size only)
    lengths [B] int64  valid steps per sequence (None: all T)
"""

from __future__ import annotations

import torch
from torch import Tensor

#: gates per cell kind: G = GATES[mode] * hidden_size
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
MODES = tuple(GATES)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence runs in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def lstm_cell(
    gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, w_hr: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One LSTM step. ``gx`` [B, 4H] already holds both biases. Returns (h [B, P], c [B, H])."""
    i, f, g, o = (gx + h @ w_hh.t()).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if w_hr is not None:
        h = h @ w_hr.t()
    return h, c


def gru_cell(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None = None) -> Tensor:
    """One GRU step with torch's semantics: n = tanh(x_n + r * (h @ W_hn^T + b_hn))."""
    gh = h @ w_hh.t()
    if b_hh is not None:
        gh = gh + b_hh
    x_r, x_z, x_n = gx.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


def rnn_cell(gx: Tensor, h: Tensor, w_hh: Tensor, nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step. ``gx`` [B, H] already holds both biases."""
    pre = gx + h @ w_hh.t()
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


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
    """Run one direction of one layer over time, given the input projection ``gx``.

    Args:
        mode: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        gx: [T, B, G] input projection (see module docstring for which biases it holds).
        h0: [B, P] initial hidden state. c0: [B, H] initial cell state (LSTM), else None.
        w_hh: [G, P] recurrent weight. b_hh: [G] recurrent bias, GRU only.
        w_hr: [P, H] LSTM projection weight, or None.
        lengths: [B] int64 valid length of each sequence, or None when every sequence has T steps.
            Steps at t >= lengths[b] leave the state untouched and output zeros (PackedSequence semantics);
            the reverse direction starts at t = lengths[b] - 1.
        reverse: run from t = T-1 down to 0.

    Returns:
        (y [T, B, P], h_n [B, P], c_n [B, H] or None), in gx's dtype.
    """
    T = gx.shape[0]
    out_dtype = gx.dtype
    dt = compute_dtype(out_dtype)
    gx = gx.to(dt)
    w_hh = w_hh.to(dt)
    b_hh = None if b_hh is None else b_hh.to(dt)
    w_hr = None if w_hr is None else w_hr.to(dt)
    h = h0.to(dt)
    c = None if c0 is None else c0.to(dt)
    ys: list[Tensor] = [gx.new_zeros(())] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        if mode == "lstm":
            h_new, c_new = lstm_cell(gx[t], h, c, w_hh, w_hr)
        elif mode == "gru":
            h_new, c_new = gru_cell(gx[t], h, w_hh, b_hh), None
        else:
            h_new, c_new = rnn_cell(gx[t], h, w_hh, "tanh" if mode == "rnn_tanh" else "relu"), None
        if lengths is None:
            h, c = h_new, c_new
            ys[t] = h
        else:
            live = (lengths > t).to(gx.device).unsqueeze(1)  # [B, 1]
            h = torch.where(live, h_new, h)
            if c is not None:
                c = torch.where(live, c_new, c)
            ys[t] = torch.where(live, h_new, torch.zeros_like(h_new))
    y = torch.stack(ys).to(out_dtype) if T else gx.new_zeros((0, *h0.shape)).to(out_dtype)
    return y, h.to(out_dtype), None if c is None else c.to(out_dtype)
