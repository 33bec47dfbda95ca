"""LSTM recurrence: launchers for kernels/lstm.py and the ``fastrnn::lstm`` / ``fastrnn::lstm_backward`` ops.

Memory: with ``save`` (grad mode on and an input requiring grad) the forward saves, per step, the fp32
activated gates (4H), the fp32 cell state (H), the fp32 hidden state (P) and with proj_size the fp32 m = o
tanh(c) (H), i.e. (5H + P [+ H]) * 4 bytes per batch row and step; the backward then never recomputes the
recurrent GEMM. The backward allocates the fp32 gate gradient (4H per row and step, reused as dgx for fp32
inputs) and with proj_size dL/dh (P). Without ``save`` the forward keeps two state slots and no gates
(inference).
"""

import torch
from torch import Tensor

from fastrnn.kernels import lstm as lstm_kernels
from fastrnn.ops import _launch as L
from fastrnn.ops import _second_order
from fastrnn.ops import strategy as S


def _lengths_arg(lengths: Tensor | None, dummy: Tensor) -> Tensor:
    return dummy if lengths is None else lengths


def _ms_shape(T: int, B: int, H: int, w_hr: Tensor | None, save: bool) -> tuple[int, ...]:
    return (0,) if w_hr is None else (T if save else 1, B, H)


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
    strategy: str = "tiled",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LSTM over one direction. Returns (y, h_n, c_n, gates, hs, cs, ms); the last four are saved for the
    backward (see kernels/lstm.py for their layout; ms is empty without proj_size, gates without save).
    ``strategy``: ``"tiled"`` or ``"persistent"`` kernels (fastrnn/ops/strategy.py)."""
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
    if T > 0 and B > 0 and strategy == "persistent":
        pg = S.persistent_grid(B, H, P, dev)
        res = S.resident_args("lstm", pg, H, P, mm)
        L.count(S.kernel_name("lstm_fwd_persistent", res))
        lstm_kernels.lstm_fwd_persistent_kernel[(pg.programs,)](
            gx, w, w_r, _lengths_arg(lengths, gx), hs, cs, gates, ms, y, S.barrier_counters(pg, dev), T, B, H, P,
            pg.n_h, REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_PROJ=w_hr is not None, SAVE=save,
            BB=L.BLOCK_B, BH=pg.block_h, BK=L.block(max(H, P)), DOT_FP32=L.dot_fp32(mm), **res, **S.launch_options(dev),
        )  # fmt: skip
    elif T > 0 and B > 0:
        L.count("lstm_fwd")
        lstm_kernels.lstm_fwd_kernel[L.grid(B)](
            gx, w, w_r, _lengths_arg(lengths, gx), hs, cs, gates, ms, y, T, B, H, P,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_PROJ=w_hr is not None, SAVE=save,
            BB=L.BLOCK_B, BH=L.block(max(H, P)), BK=L.block(max(H, P)), DOT_FP32=L.dot_fp32(mm),
        )  # fmt: skip
    h_n = L.final_state(hs, T, reverse, save, gx.dtype)
    c_n = L.final_state(cs, T, reverse, save, gx.dtype)
    return y, h_n, c_n, gates, hs, cs, ms


@lstm.register_fake
def _(gx, h0, c0, w_hh, w_hr, lengths, reverse, save, strategy="tiled"):
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
    strategy: str = "tiled",
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
    if T > 0 and B > 0 and strategy == "persistent":
        pg = S.persistent_grid(B, H, P, dev)
        res = S.resident_args("lstm", pg, H, P, mm)
        L.count(S.kernel_name("lstm_bwd_persistent", res))
        lstm_kernels.lstm_bwd_persistent_kernel[(pg.programs,)](
            dy, gates, cs, w, w_r, _lengths_arg(lengths, dy), dh, dc, dg, dhs, S.barrier_counters(pg, dev),
            T, B, H, P, pg.n_h, REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_PROJ=w_hr is not None,
            BB=L.BLOCK_B, BH=pg.block_h, BK=L.block(max(H, P)), DOT_FP32=L.dot_fp32(mm), **res, **S.launch_options(dev),
        )  # fmt: skip
    elif T > 0 and B > 0:
        L.count("lstm_bwd")
        lstm_kernels.lstm_bwd_kernel[L.grid(B)](
            dy, gates, cs, w, w_r, _lengths_arg(lengths, dy), dh, dc, dg, dhs, T, B, H, P,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, HAS_PROJ=w_hr is not None,
            BB=L.BLOCK_B, BH=L.block(max(H, P)), BK=L.block(max(H, P)), DOT_FP32=L.dot_fp32(mm),
        )  # fmt: skip
    dw_hh = L.weight_grad(dg, L.prev_states(hs, reverse))
    dw_hr = L.weight_grad(dhs, ms) if w_hr is not None else torch.zeros((0,), dtype=torch.float32, device=dev)
    return dg.to(dy.dtype), dh, dc, dw_hh, dw_hr


@lstm_backward.register_fake
def _(dy, dh_n, dc_n, gates, hs, cs, ms, w_hh, w_hr, lengths, reverse, strategy="tiled"):
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


def _setup_context(ctx, inputs, output):
    gx, h0, c0, w_hh, w_hr, lengths, reverse, save, strategy = inputs
    _, _, _, gates, hs, cs, ms = output
    # second-order hook: the inputs a create_graph backward recomputes from (fastrnn/ops/_second_order.py)
    ctx.save_for_backward(gates, hs, cs, ms, w_hh, w_hr, lengths, *_second_order.to_save(gx, h0, c0))
    ctx.reverse, ctx.saved, ctx.strategy = reverse, save, strategy
    ctx.dtypes = (gx.dtype, h0.dtype, c0.dtype)


def _backward(ctx, dy, dh_n, dc_n, *_):
    L.check_saved(ctx.saved, "lstm")
    gates, hs, cs, ms, w_hh, w_hr, lengths, *inputs = ctx.saved_tensors
    if _second_order.active(inputs):  # second-order hook: create_graph=True, differentiable recompute
        gx, h0, c0 = inputs
        dgx, dh0, dc0, dw_hh, _, dw_hr = _second_order.backward(
            "lstm", gx, h0, c0, w_hh, None, w_hr, lengths, ctx.reverse, dy, dh_n, dc_n
        )
        return dgx, dh0, dc0, dw_hh, dw_hr, None, None, None, None
    gx_dtype, h0_dtype, c0_dtype = ctx.dtypes
    if dy is None:
        dy = torch.zeros((gates.shape[0], gates.shape[1], hs.shape[-1]), dtype=gx_dtype, device=gates.device)
    if dh_n is None:
        dh_n = torch.zeros(hs.shape[1:], dtype=torch.float32, device=gates.device)
    if dc_n is None:
        dc_n = torch.zeros(cs.shape[1:], dtype=torch.float32, device=gates.device)
    dgx, dh0, dc0, dw_hh, dw_hr = lstm_backward(
        dy, dh_n, dc_n, gates, hs, cs, ms, w_hh, w_hr, lengths, ctx.reverse, ctx.strategy
    )
    return (
        dgx,
        dh0.to(h0_dtype),
        dc0.to(c0_dtype),
        dw_hh.to(w_hh.dtype),
        None if w_hr is None else dw_hr.to(w_hr.dtype),
        None,
        None,
        None,
        None,
    )


lstm.register_autograd(_backward, setup_context=_setup_context)
