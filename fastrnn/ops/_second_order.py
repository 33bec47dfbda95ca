"""Double backward of the Triton recurrences: a differentiable recompute when autograd builds a graph.

The backward kernels (``fastrnn::lstm_backward``, ``::gru_backward``, ``::rnn_backward``) are first-order
only. Autograd runs a backward with grad mode on exactly when it was asked to build a graph of the gradients
(``create_graph=True``, e.g. ``torch.autograd.grad(loss, x, create_graph=True)`` for a gradient penalty).
In that case, and only then, a cell's backward calls :func:`backward` here instead of its kernel: it re-runs
the forward of that one direction of that one layer with fastrnn's differentiable step loop
(:func:`fastrnn.reference.recurrence`) on the op's saved inputs, which unpack with their autograd history,
and returns ``torch.autograd.grad`` of the recomputed (y, h_n, c_n) against the incoming (dy, dh_n, dc_n)
with ``create_graph=True``. The result is an ordinary autograd graph, so a second backward reaches gx (and
through it x, W_ih, the biases), h0, c0, W_hh, b_hh, W_hr and the incoming gradients themselves, and a
third-order gradient works the same way. Without ``create_graph`` (every plain ``loss.backward()``) the
kernels run exactly as before; inside a graph traced by ``torch.compile`` the joint backward is traced with
grad mode off, so it traces the kernels too.

Interface (cell-agnostic, in :func:`fastrnn.reference.recurrence`'s argument order): the forward's
``setup_context`` saves ``*to_save(gx, h0[, c0 | b_hh])`` after what the kernels' backward reads; the
backward unpacks them and, where :func:`active` says so, returns what :func:`backward` gives.

Cost. First-order: no extra launch, copy or compute; the forward keeps gx [T, B, G] in its own dtype and
h0 (c0, b_hh) alive until the backward -- tensors the op already received, not copies. gx is the one that
counts: 4H (GRU 3H, RNN H) elements per batch row and step beside the 5H + P fp32 floats the LSTM forward
saves (GRU 5H, RNN H), i.e. +67% (LSTM, P = H) / +60% / +100% saved bytes per layer for fp32, +33% / +30% / +50% for
fp16/bf16. Under torch.compile the partitioner keeps only what the traced first-order backward reads, so the
extra tensors are not saved there. ``FASTRNN_DOUBLE_BACKWARD=0`` (read at each forward) saves nothing extra;
a backward with ``create_graph=True`` then runs the kernels and a second backward through it raises
PyTorch's "no autograd formula" error. With ``create_graph=True``: the backward is the reference loop, T
steps of small PyTorch ops per layer and direction (measured on CPU in the README), computing in fp32 (fp64
for fp64) like the reference backend, and its graph holds that loop's per-step intermediates until the second
backward has run (roughly what the reference backend's forward would keep for the same layer).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from fastrnn import reference

ENV_VAR = "FASTRNN_DOUBLE_BACKWARD"


def enabled() -> bool:
    """Whether forwards keep their inputs for a double backward (``$FASTRNN_DOUBLE_BACKWARD``, default on)."""
    return os.environ.get(ENV_VAR, "1") not in ("0", "")


def to_save(*inputs: Tensor | None) -> tuple[Tensor | None, ...]:
    """The forward inputs a recompute needs beside those the kernels' backward keeps anyway (gx, h0 and
    c0 or b_hh), for ``ctx.save_for_backward``; nothing when :func:`enabled` is off."""
    return inputs if enabled() else ()


def active(saved_inputs: tuple | list) -> bool:
    """Whether this backward must be differentiable: autograd is building a graph of it (grad mode is on
    inside a backward only under ``create_graph=True``) and the forward kept its inputs."""
    return torch.is_grad_enabled() and len(saved_inputs) > 0


def backward(
    mode: str,
    gx: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    dy: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None = None,
) -> tuple[Tensor | None, ...]:
    """Differentiable gradients of one direction of one layer, by recompute (see the module docstring).

    Args:
        mode, gx, h0, c0, w_hh, b_hh, w_hr, lengths, reverse: the forward's inputs, as
            :func:`fastrnn.reference.recurrence` takes them (the saved tensors, with their autograd history).
        dy [T, B, P], dh_n [B, P], dc_n [B, H] (LSTM): the incoming gradients; None means zero.

    Returns:
        (dgx, dh0, dc0, dw_hh, db_hh, dw_hr), each in its input's dtype and carrying the graph that a second
        backward differentiates; None for an input that is None or does not require grad.
    """
    inputs = (gx, h0, c0, w_hh, b_hh, w_hr)
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    result: list[Tensor | None] = [None] * len(inputs)
    if not wanted:
        return tuple(result)
    with torch.enable_grad():
        outs = reference.recurrence(mode, gx, h0, c0, w_hh, b_hh, w_hr, lengths, reverse)
    pairs = [(o, g.to(o.dtype)) for o, g in zip(outs, (dy, dh_n, dc_n), strict=True)
             if o is not None and g is not None and o.requires_grad]
    if not pairs:
        return tuple(result)
    grads = torch.autograd.grad(
        [o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
        create_graph=True, allow_unused=True,
    )
    for i, g in zip(wanted, grads, strict=True):
        result[i] = g
    return tuple(result)
