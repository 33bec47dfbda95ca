"""GRU recurrence: launchers for kernels/gru.py and the ``fastrnn::gru`` / ``fastrnn::gru_backward`` ops.

Memory: with ``save`` (grad mode on and an input requiring grad) the forward saves, per step, fp32 r, z, n and
hn = h W_hn^T + b_hn (4H) and the fp32 hidden state (H), i.e. 5H * 4 bytes per batch row and step; the
backward never recomputes the recurrent GEMM. The backward allocates dgx (input dtype), the fp32 recurrent-
side gradient dgh (3H per row and step) and the partials buffer (2 x unit tiles x B x H fp32). Without
``save`` the forward keeps two state slots and no gates (inference).
"""

import torch
from torch import Tensor

from fastrnn.kernels import gru as kernels
from fastrnn.ops import _autograd
from fastrnn.ops import _launch as L
from fastrnn.ops import strategy as S


@torch.library.custom_op("fastrnn::gru", mutates_args=())
def gru(
    gx: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    save: bool,
    strategy: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GRU over one direction. Returns (y, h_n, gates, hs); gates [T, B, 4H] (r, z, n, hn; empty without
    save) and hs [T+1, B, H] are saved for the backward. ``strategy``: the request fastrnn/ops/strategy.py
    plans the kernels from."""
    L.check_device(gx)
    T, B, G = gx.shape
    H = G // 3
    dev = gx.device
    mm = L.matmul_dtype(gx.dtype)
    gx = gx.contiguous()
    w = w_hh.to(mm).contiguous()
    b = torch.zeros((G,), dtype=torch.float32, device=dev) if b_hh is None else b_hh.to(torch.float32).contiguous()
    hs = L.state_buffer(h0, T, reverse, save)
    gates = torch.empty((T, B, 4 * H) if save else (0,), dtype=torch.float32, device=dev)
    y = torch.empty((T, B, H), dtype=gx.dtype, device=dev)
    if T > 0 and B > 0:
        plan = S.plan(kernels, "gru", False, B, H, H, mm, dev, strategy)
        xh = L.exchange_buffer((B, H), mm, dev, init=h0)
        plan.launch(
            gx, w, b, gx if lengths is None else lengths, hs, gates, y, xh, plan.flags(dev), T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, SAVE=save,
        )  # fmt: skip
    return y, L.final_state(hs, T, reverse, save, gx.dtype), gates, hs


@gru.register_fake
def _(gx, h0, w_hh, b_hh, lengths, reverse, save, strategy="auto"):
    T, B, G = gx.shape
    H = G // 3
    f32 = {"dtype": torch.float32, "device": gx.device}
    return (
        gx.new_empty((T, B, H)),
        gx.new_empty((B, H)),
        torch.empty((T, B, 4 * H) if save else (0,), **f32),
        torch.empty((L.state_slots(T, save), B, H), **f32),
    )


@torch.library.custom_op("fastrnn::gru_backward", mutates_args=())
def gru_backward(
    dy: Tensor,
    dh_n: Tensor,
    gates: Tensor,
    hs: Tensor,
    w_hh: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    strategy: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`gru`: (dgx in dy's dtype, then fp32 dh0, dw_hh, db_hh)."""
    L.check_device(dy)
    T, B, H = dy.shape
    dev = dy.device
    mm = L.matmul_dtype(dy.dtype)
    dy = dy.contiguous()
    w = w_hh.to(mm).contiguous()
    dh = L.carried_grad(dh_n, (B, H), dev)
    dgx = torch.empty((T, B, 3 * H), dtype=dy.dtype, device=dev)
    dgh = torch.empty((T, B, 3 * H), dtype=torch.float32, device=dev)
    if T > 0 and B > 0:
        plan = S.plan(kernels, "gru", True, B, H, H, mm, dev, strategy)
        xz = L.partials_buffer(plan.grid.unit_tiles(H), B, H, dev)
        plan.launch(
            dy, gates, hs, w, dy if lengths is None else lengths, dh, dgx, dgh, xz, plan.flags(dev), T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None,
        )  # fmt: skip
    dw_hh = L.weight_grad(dgh, L.prev_states(hs, reverse), mm, S.precision(mm))
    db_hh = dgh.sum(dim=(0, 1))
    return dgx, dh, dw_hh, db_hh


@gru_backward.register_fake
def _(dy, dh_n, gates, hs, w_hh, lengths, reverse, strategy="auto"):
    T, B, H = dy.shape
    f32 = {"dtype": torch.float32, "device": dy.device}
    return (
        dy.new_empty((T, B, 3 * H)),
        torch.empty((B, H), **f32),
        torch.empty((3 * H, H), **f32),
        torch.empty((3 * H,), **f32),
    )


_autograd.register(
    gru,
    gru_backward,
    states=2,
    grads=("gx", "h0", "w_hh", "b_hh"),
    passes=("w_hh", "lengths", "reverse", "strategy"),
    mode=lambda args: "gru",
)
