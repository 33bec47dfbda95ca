"""LSTM recurrence: launchers for kernels/lstm.py and the ``fastrnn::lstm`` / ``fastrnn::lstm_backward`` ops.

Memory: with ``save`` (grad mode on and an input requiring grad) the forward saves, per step, the fp32
activated gates (4H), the fp32 cell state (H), the fp32 hidden state (P) and with proj_size the fp32 m = o
tanh(c) (H), i.e. (5H + P [+ H]) * 4 bytes per batch row and step; the backward then never recomputes the
recurrent GEMM. The backward allocates the fp32 gate gradient (4H per row and step, reused as dgx for fp32
inputs), with proj_size dL/dh (P), and the partials buffer (2 x unit tiles x B x P fp32). Without ``save`` the
forward keeps two state slots and no gates (inference).
"""

import torch
from torch import Tensor

from fastrnn.kernels import lstm as kernels
from fastrnn.ops import _autograd
from fastrnn.ops import _launch as L
from fastrnn.ops import strategy as S


def _ms_shape(T: int, B: int, H: int, w_hr: Tensor | None, save: bool) -> tuple[int, ...]:
    return (T, B, H) if w_hr is not None and save else (0,)


@torch.library.custom_op("fastrnn::lstm", mutates_args=())
def lstm(
    gx: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    save: bool,
    strategy: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LSTM over one direction. Returns (y, h_n, c_n, gates, hs, cs, ms); the last four are saved for the
    backward (see kernels/lstm.py for their layout; ms is empty without proj_size or save, gates without
    save). ``strategy``: the request fastrnn/ops/strategy.py plans the kernels from."""
    L.check_device(gx)
    T, B, G = gx.shape
    H, P = G // 4, h0.shape[-1]
    dev = gx.device
    mm = L.matmul_dtype(gx.dtype)
    gx = gx.contiguous()
    w = w_hh.to(mm).contiguous()
    w_r = w if w_hr is None else w_hr.to(mm).contiguous()
    hs = L.state_buffer(h0, T, reverse, save)
    cs = L.state_buffer(c0, T, reverse, save)
    gates = torch.empty((T, B, G) if save else (0,), dtype=torch.float32, device=dev)
    ms = torch.empty(_ms_shape(T, B, H, w_hr, save), dtype=torch.float32, device=dev)
    y = torch.empty((T, B, P), dtype=gx.dtype, device=dev)
    if T > 0 and B > 0:
        plan = S.plan(kernels, "lstm", False, B, H, P, mm, dev, strategy)
        xh = L.exchange_buffer((B, P), mm, dev, init=h0)
        xm = L.exchange_buffer((B, H), mm, dev) if w_hr is not None else xh
        plan.launch(
            gx, w, w_r, gx if lengths is None else lengths, hs, cs, gates, ms, y, xh, xm, plan.flags(dev), T, B, H, P,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_PROJ=w_hr is not None, SAVE=save,
        )  # fmt: skip
    h_n = L.final_state(hs, T, reverse, save, gx.dtype)
    c_n = L.final_state(cs, T, reverse, save, gx.dtype)
    return y, h_n, c_n, gates, hs, cs, ms


@lstm.register_fake
def _(gx, h0, c0, w_hh, w_hr, lengths, reverse, save, strategy="auto"):
    T, B, G = gx.shape
    H, P = G // 4, h0.shape[-1]
    f32 = {"dtype": torch.float32, "device": gx.device}
    return (
        gx.new_empty((T, B, P)),
        gx.new_empty((B, P)),
        gx.new_empty((B, H)),
        torch.empty((T, B, G) if save else (0,), **f32),
        torch.empty((L.state_slots(T, save), B, P), **f32),
        torch.empty((L.state_slots(T, save), B, H), **f32),
        torch.empty(_ms_shape(T, B, H, w_hr, save), **f32),
    )


@torch.library.custom_op("fastrnn::lstm_backward", mutates_args=())
def lstm_backward(
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
    gates: Tensor,
    hs: Tensor,
    cs: Tensor,
    ms: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    strategy: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`lstm`: (dgx in dy's dtype, then fp32 dh0, dc0, dw_hh, dw_hr (empty without
    proj_size))."""
    L.check_device(dy)
    T, B, G = gates.shape
    H, P = G // 4, hs.shape[-1]
    dev = dy.device
    mm = L.matmul_dtype(dy.dtype)
    dy = dy.contiguous()
    w = w_hh.to(mm).contiguous()
    w_r = w if w_hr is None else w_hr.to(mm).contiguous()
    dh = L.carried_grad(dh_n, (B, P), dev)
    dc = L.carried_grad(dc_n, (B, H), dev)
    dg = torch.empty((T, B, G), dtype=torch.float32, device=dev)
    dhs = torch.empty((T, B, P) if w_hr is not None else (0,), dtype=torch.float32, device=dev)
    if T > 0 and B > 0:
        plan = S.plan(kernels, "lstm", True, B, H, P, mm, dev, strategy)
        xz = L.partials_buffer(plan.grid.unit_tiles(H), B, P, dev)
        xd = L.exchange_buffer((B, P), mm, dev) if w_hr is not None else dh
        plan.launch(
            dy, gates, cs, w, w_r, dy if lengths is None else lengths, dh, dc, dg, dhs, xz, xd, plan.flags(dev),
            T, B, H, P, REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_PROJ=w_hr is not None,
        )  # fmt: skip
    prec = S.precision(mm)
    dw_hh = L.weight_grad(dg, L.prev_states(hs, reverse), mm, prec)
    dw_hr = L.weight_grad(dhs, ms, mm, prec) if w_hr is not None else torch.zeros((0,), dtype=torch.float32, device=dev)
    return dg.to(dy.dtype), dh, dc, dw_hh, dw_hr


@lstm_backward.register_fake
def _(dy, dh_n, dc_n, gates, hs, cs, ms, w_hh, w_hr, lengths, reverse, strategy="auto"):
    T, B, G = gates.shape
    H, P = G // 4, hs.shape[-1]
    f32 = {"dtype": torch.float32, "device": dy.device}
    return (
        dy.new_empty((T, B, G)),
        torch.empty((B, P), **f32),
        torch.empty((B, H), **f32),
        torch.empty((G, P), **f32),
        torch.empty(tuple(w_hr.shape) if w_hr is not None else (0,), **f32),
    )


_autograd.register(
    lstm,
    lstm_backward,
    states=3,
    grads=("gx", "h0", "c0", "w_hh", "w_hr"),
    passes=("w_hh", "w_hr", "lengths", "reverse", "strategy"),
    mode=lambda args: "lstm",
)
