"""Elman RNN recurrence: launchers for kernels/rnn.py and the ``fastrnn::rnn`` / ``fastrnn::rnn_backward`` ops.

Memory: with ``save`` (grad mode on and an input requiring grad) the forward saves only the fp32 hidden states
[T+1, B, H] (the activation's derivative is read off h_t), else it keeps two state slots; the backward
allocates the fp32 pre-activation gradient [T, B, H] (reused as dgx for fp32 inputs).
"""

import torch
from torch import Tensor

from fastrnn.kernels import rnn as rnn_kernels
from fastrnn.ops import _launch as L
from fastrnn.ops import _second_order
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
    strategy: str = "tiled",
) -> tuple[Tensor, Tensor, Tensor]:
    """Elman RNN over one direction. Returns (y, h_n, hs); hs [T+1, B, H] is saved for the backward.
    ``strategy``: ``"tiled"`` or ``"persistent"`` kernels (fastrnn/ops/strategy.py)."""
    L.check_device(gx)
    T, B, H = gx.shape
    dev = gx.device
    mm = L.matmul_dtype(gx.dtype)
    gx = gx.contiguous()
    w = w_hh.to(mm).contiguous()
    hs = L.state_buffer(h0, T, reverse, save)
    y = torch.empty((T, B, H), dtype=gx.dtype, device=dev)
    if T > 0 and B > 0 and strategy == "persistent":
        pg = S.persistent_grid(B, H, H, dev)
        res = S.resident_args("rnn_tanh", pg, H, H, mm)
        L.count(S.kernel_name("rnn_fwd_persistent", res))
        rnn_kernels.rnn_fwd_persistent_kernel[(pg.programs,)](
            gx, w, gx if lengths is None else lengths, hs, y, S.barrier_counters(pg, dev), T, B, H, pg.n_h,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, ACT=ACTIVATIONS[nonlinearity], SAVE=save,
            BB=L.BLOCK_B, BH=pg.block_h, BK=L.block(H), DOT_FP32=L.dot_fp32(mm), **res, **S.launch_options(dev),
        )  # fmt: skip
    elif T > 0 and B > 0:
        L.count("rnn_fwd")
        rnn_kernels.rnn_fwd_kernel[L.grid(B)](
            gx, w, gx if lengths is None else lengths, hs, y, T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, ACT=ACTIVATIONS[nonlinearity], SAVE=save,
            BB=L.BLOCK_B, BH=L.block(H), BK=L.block(H), DOT_FP32=L.dot_fp32(mm),
        )  # fmt: skip
    return y, L.final_state(hs, T, reverse, save, gx.dtype), hs


@rnn.register_fake
def _(gx, h0, w_hh, lengths, reverse, nonlinearity, save, strategy="tiled"):
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
    strategy: str = "tiled",
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
    if T > 0 and B > 0 and strategy == "persistent":
        pg = S.persistent_grid(B, H, H, dev)
        res = S.resident_args("rnn_tanh", pg, H, H, mm)
        L.count(S.kernel_name("rnn_bwd_persistent", res))
        rnn_kernels.rnn_bwd_persistent_kernel[(pg.programs,)](
            dy, hs, w, dy if lengths is None else lengths, dh, dg, S.barrier_counters(pg, dev), T, B, H, pg.n_h,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, ACT=ACTIVATIONS[nonlinearity],
            BB=L.BLOCK_B, BH=pg.block_h, BK=L.block(H), DOT_FP32=L.dot_fp32(mm), **res, **S.launch_options(dev),
        )  # fmt: skip
    elif T > 0 and B > 0:
        L.count("rnn_bwd")
        rnn_kernels.rnn_bwd_kernel[L.grid(B)](
            dy, hs, w, dy if lengths is None else lengths, dh, dg, T, B, H,
            REVERSE=int(reverse), HAS_LEN=lengths is not None, ACT=ACTIVATIONS[nonlinearity],
            BB=L.BLOCK_B, BH=L.block(H), BK=L.block(H), DOT_FP32=L.dot_fp32(mm),
        )  # fmt: skip
    dw_hh = L.weight_grad(dg, L.prev_states(hs, reverse))
    return dg.to(dy.dtype), dh, dw_hh


@rnn_backward.register_fake
def _(dy, dh_n, hs, w_hh, lengths, reverse, nonlinearity, strategy="tiled"):
    T, B, H = dy.shape
    f32 = {"dtype": torch.float32, "device": dy.device}
    return dy.new_empty((T, B, H)), torch.empty((B, H), **f32), torch.empty((H, H), **f32)


def _setup_context(ctx, inputs, output):
    gx, h0, w_hh, lengths, reverse, nonlinearity, save, strategy = inputs
    # second-order hook: the inputs a create_graph backward recomputes from (fastrnn/ops/_second_order.py)
    ctx.save_for_backward(output[2], w_hh, lengths, *_second_order.to_save(gx, h0))
    ctx.reverse, ctx.nonlinearity, ctx.saved, ctx.strategy = reverse, nonlinearity, save, strategy
    ctx.dtypes = (gx.dtype, h0.dtype)


def _backward(ctx, dy, dh_n, *_):
    L.check_saved(ctx.saved, "rnn")
    hs, w_hh, lengths, *inputs = ctx.saved_tensors
    if _second_order.active(inputs):  # second-order hook: create_graph=True, differentiable recompute
        gx, h0 = inputs
        dgx, dh0, _, dw_hh, _, _ = _second_order.backward(
            "rnn_" + ctx.nonlinearity, gx, h0, None, w_hh, None, None, lengths, ctx.reverse, dy, dh_n
        )
        return dgx, dh0, dw_hh, None, None, None, None, None
    gx_dtype, h0_dtype = ctx.dtypes
    if dy is None:
        dy = torch.zeros((hs.shape[0] - 1, *hs.shape[1:]), dtype=gx_dtype, device=hs.device)
    if dh_n is None:
        dh_n = torch.zeros(hs.shape[1:], dtype=torch.float32, device=hs.device)
    dgx, dh0, dw_hh = rnn_backward(dy, dh_n, hs, w_hh, lengths, ctx.reverse, ctx.nonlinearity, ctx.strategy)
    return dgx, dh0.to(h0_dtype), dw_hh.to(w_hh.dtype), None, None, None, None, None


rnn.register_autograd(_backward, setup_context=_setup_context)
