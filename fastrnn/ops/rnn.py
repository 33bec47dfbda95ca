"""Elman RNN recurrence: launchers for kernels/rnn.py and the ``fastrnn::rnn`` / ``fastrnn::rnn_backward`` ops.

Memory: with ``save`` (grad mode on and an input requiring grad) the forward saves only the fp32 hidden states
[T+1, B, H] (the activation's derivative is read off h_t), else it keeps two state slots; the backward
allocates the fp32 pre-activation gradient [T, B, H] (reused as dgx for fp32 inputs) and the partials buffer
(2 x unit tiles x B x H fp32).
"""

import torch
from torch import Tensor

from fastrnn.kernels import rnn as kernels
from fastrnn.ops import _autograd
from fastrnn.ops import _launch as L
from fastrnn.ops import strategy as S

#: nonlinearity name -> the kernels' ACT code
ACTIVATIONS = {"tanh": 0, "relu": 1}


@torch.library.custom_op("fastrnn::rnn", mutates_args=())
def rnn(
    gx: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    save: bool,
    strategy: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Elman RNN over one direction. Returns (y, h_n, hs); hs [T+1, B, H] is saved for the backward.
    ``strategy``: the request fastrnn/ops/strategy.py plans the kernels from."""
    L.check_device(gx)
    T, B, H = gx.shape
    dev = gx.device
    mm = L.matmul_dtype(gx.dtype)
    gx = gx.contiguous()
    w = w_hh.to(mm).contiguous()
    hs = L.state_buffer(h0, T, reverse, save)
    y = torch.empty((T, B, H), dtype=gx.dtype, device=dev)
    if T > 0 and B > 0:
        plan = S.plan(kernels, f"rnn_{nonlinearity}", False, B, H, H, mm, dev, strategy)
        xh = L.exchange_buffer((B, H), mm, dev, init=h0)
        plan.launch(
            gx, w, gx if lengths is None else lengths, hs, y, xh, plan.flags(dev), T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, ACT=ACTIVATIONS[nonlinearity], SAVE=save,
        )  # fmt: skip
    return y, L.final_state(hs, T, reverse, save, gx.dtype), hs


@rnn.register_fake
def _(gx, h0, w_hh, lengths, reverse, nonlinearity, save, strategy="auto"):
    T, B, H = gx.shape
    return (
        gx.new_empty((T, B, H)),
        gx.new_empty((B, H)),
        torch.empty((L.state_slots(T, save), B, H), dtype=torch.float32, device=gx.device),
    )


@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=())
def rnn_backward(
    dy: Tensor,
    dh_n: Tensor,
    hs: Tensor,
    w_hh: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    nonlinearity: str,
    strategy: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`rnn`: (dgx in dy's dtype, then fp32 dh0, dw_hh)."""
    L.check_device(dy)
    T, B, H = dy.shape
    dev = dy.device
    mm = L.matmul_dtype(dy.dtype)
    dy = dy.contiguous()
    w = w_hh.to(mm).contiguous()
    dh = L.carried_grad(dh_n, (B, H), dev)
    dg = torch.empty((T, B, H), dtype=torch.float32, device=dev)
    if T > 0 and B > 0:
        plan = S.plan(kernels, f"rnn_{nonlinearity}", True, B, H, H, mm, dev, strategy)
        xz = L.partials_buffer(plan.grid.unit_tiles(H), B, H, dev)
        plan.launch(
            dy, hs, w, dy if lengths is None else lengths, dh, dg, xz, plan.flags(dev), T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, ACT=ACTIVATIONS[nonlinearity],
        )  # fmt: skip
    dw_hh = L.weight_grad(dg, L.prev_states(hs, reverse), mm, S.precision(mm))
    return dg.to(dy.dtype), dh, dw_hh


@rnn_backward.register_fake
def _(dy, dh_n, hs, w_hh, lengths, reverse, nonlinearity, strategy="auto"):
    T, B, H = dy.shape
    f32 = {"dtype": torch.float32, "device": dy.device}
    return dy.new_empty((T, B, H)), torch.empty((B, H), **f32), torch.empty((H, H), **f32)


_autograd.register(
    rnn,
    rnn_backward,
    states=2,
    grads=("gx", "h0", "w_hh"),
    passes=("w_hh", "lengths", "reverse", "nonlinearity", "strategy"),
    mode=lambda args: "rnn_" + args["nonlinearity"],
)
