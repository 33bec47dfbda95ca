"""GRU recurrence: launchers for kernels/gru.py and the ``fastrnn::gru`` / ``fastrnn::gru_backward`` ops.

Memory: with ``save`` (grad mode on and an input requiring grad) the forward saves, per step, fp32 r, z, n and
hn = h W_hn^T + b_hn (4H) and the fp32 hidden state (H), i.e. 5H * 4 bytes per batch row and step; the
backward never recomputes the recurrent GEMM. The backward allocates dgx (input dtype) and the fp32 recurrent-
side gradient dgh (3H per row and step). Without ``save`` the forward keeps two state slots and no gates
(inference).
"""

import torch
from torch import Tensor

from fastrnn.kernels import gru as gru_kernels
from fastrnn.ops import _launch as L
from fastrnn.ops import _second_order
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
    strategy: str = "tiled",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GRU over one direction. Returns (y, h_n, gates, hs); gates [T, B, 4H] (r, z, n, hn; empty without
    save) and hs [T+1, B, H] are saved for the backward. ``strategy``: ``"tiled"`` or ``"persistent"``
    kernels (fastrnn/ops/strategy.py)."""
    L.check_device(gx)
    T, B, G = gx.shape
    H = G // 3
    dev = gx.device
    mm = L.matmul_dtype(gx.dtype)
    gx = gx.contiguous()
    w = w_hh.to(mm).contiguous()
    b = w if b_hh is None else b_hh.to(torch.float32).contiguous()
    hs = L.state_buffer(h0, T, reverse, save)
    gates = torch.empty((T, B, 4 * H) if save else (0,), dtype=torch.float32, device=dev)
    y = torch.empty((T, B, H), dtype=gx.dtype, device=dev)
    if T > 0 and B > 0 and strategy == "persistent":
        pg = S.persistent_grid(B, H, H, dev)
        res = S.resident_args("gru", pg, H, H, mm)
        L.count(S.kernel_name("gru_fwd_persistent", res))
        gru_kernels.gru_fwd_persistent_kernel[(pg.programs,)](
            gx, w, b, gx if lengths is None else lengths, hs, gates, y, S.barrier_counters(pg, dev), T, B, H, pg.n_h,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_BIAS=b_hh is not None, SAVE=save,
            BB=L.BLOCK_B, BH=pg.block_h, BK=L.block(H), DOT_FP32=L.dot_fp32(mm), **res, **S.launch_options(dev),
        )  # fmt: skip
    elif T > 0 and B > 0:
        L.count("gru_fwd")
        gru_kernels.gru_fwd_kernel[L.grid(B)](
            gx, w, b, gx if lengths is None else lengths, hs, gates, y, T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_BIAS=b_hh is not None, SAVE=save,
            BB=L.BLOCK_B, BH=L.block(H), BK=L.block(H), DOT_FP32=L.dot_fp32(mm),
        )  # fmt: skip
    return y, L.final_state(hs, T, reverse, save, gx.dtype), gates, hs


@gru.register_fake
def _(gx, h0, w_hh, b_hh, lengths, reverse, save, strategy="tiled"):
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
    strategy: str = "tiled",
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
    if T > 0 and B > 0 and strategy == "persistent":
        pg = S.persistent_grid(B, H, H, dev)
        res = S.resident_args("gru", pg, H, H, mm)
        L.count(S.kernel_name("gru_bwd_persistent", res))
        gru_kernels.gru_bwd_persistent_kernel[(pg.programs,)](
            dy, gates, hs, w, dy if lengths is None else lengths, dh, dgx, dgh, S.barrier_counters(pg, dev),
            T, B, H, pg.n_h, REVERSE=int(reverse), HAS_LEN=lengths is not None,
            BB=L.BLOCK_B, BH=pg.block_h, BK=L.block(H), DOT_FP32=L.dot_fp32(mm), **res, **S.launch_options(dev),
        )  # fmt: skip
    elif T > 0 and B > 0:
        L.count("gru_bwd")
        gru_kernels.gru_bwd_kernel[L.grid(B)](
            dy, gates, hs, w, dy if lengths is None else lengths, dh, dgx, dgh, T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None,
            BB=L.BLOCK_B, BH=L.block(H), BK=L.block(H), DOT_FP32=L.dot_fp32(mm),
        )  # fmt: skip
    dw_hh = L.weight_grad(dgh, L.prev_states(hs, reverse))
    db_hh = dgh.sum(dim=(0, 1))
    return dgx, dh, dw_hh, db_hh


@gru_backward.register_fake
def _(dy, dh_n, gates, hs, w_hh, lengths, reverse, strategy="tiled"):
    T, B, H = dy.shape
    f32 = {"dtype": torch.float32, "device": dy.device}
    return (
        dy.new_empty((T, B, 3 * H)),
        torch.empty((B, H), **f32),
        torch.empty((3 * H, H), **f32),
        torch.empty((3 * H,), **f32),
    )


def _setup_context(ctx, inputs, output):
    gx, h0, w_hh, b_hh, lengths, reverse, save, strategy = inputs
    _, _, gates, hs = output
    # second-order hook: the inputs a create_graph backward recomputes from (fastrnn/ops/_second_order.py)
    ctx.save_for_backward(gates, hs, w_hh, lengths, *_second_order.to_save(gx, h0, b_hh))
    ctx.reverse, ctx.saved, ctx.strategy = reverse, save, strategy
    ctx.dtypes = (gx.dtype, h0.dtype, None if b_hh is None else b_hh.dtype)


def _backward(ctx, dy, dh_n, *_):
    L.check_saved(ctx.saved, "gru")
    gates, hs, w_hh, lengths, *inputs = ctx.saved_tensors
    if _second_order.active(inputs):  # second-order hook: create_graph=True, differentiable recompute
        gx, h0, b_hh = inputs
        dgx, dh0, _, dw_hh, db_hh, _ = _second_order.backward(
            "gru", gx, h0, None, w_hh, b_hh, None, lengths, ctx.reverse, dy, dh_n
        )
        return dgx, dh0, dw_hh, db_hh, None, None, None, None
    gx_dtype, h0_dtype, b_dtype = ctx.dtypes
    if dy is None:
        dy = torch.zeros((gates.shape[0], *hs.shape[1:]), dtype=gx_dtype, device=gates.device)
    if dh_n is None:
        dh_n = torch.zeros(hs.shape[1:], dtype=torch.float32, device=gates.device)
    dgx, dh0, dw_hh, db_hh = gru_backward(dy, dh_n, gates, hs, w_hh, lengths, ctx.reverse, ctx.strategy)
    db = None if b_dtype is None else db_hh.to(b_dtype)
    return dgx, dh0.to(h0_dtype), dw_hh.to(w_hh.dtype), db, None, None, None, None


gru.register_autograd(_backward, setup_context=_setup_context)
