"""Elman RNN (tanh / relu) recurrence kernels: the step body, the forward kernel and the backward kernel.

Glossary:
    T time, B batch, H hidden (h is [B, H]), G = H
    BB batch rows per program, BH hidden units per tile, BK reduction chunk (all >= 16)
    ACT    0 for tanh, 1 for relu
    gx     [T, B, H]    input projection with both biases (input dtype)
    w      [H, H]       W_hh in the matmul dtype
    hs     [T+1, B, H]  fp32 hidden states: h before step t at hs[t + REVERSE], after it at hs[t + 1 - REVERSE]
                        ([2, B, H] ping-pong without SAVE, see common.state_slots)
    y      [T, B, H]    output (input dtype), zero where t >= lengths[b]
    dy     [T, B, H]    upstream output gradient;  dh [B, H] fp32 carried gradient
    dg     [T, B, H]    fp32 gradient of the pre-activation
    BHP    H padded to a power of two: the reduction block of a resident W_hh slice (persistent RESIDENT only)

Design as in lstm.py. Forward: h_t = act(gx_t + h_{t-1} W_hh^T). Backward: da = dh act'(h_t), with
tanh' = 1 - h_t^2 and relu' = [h_t > 0], both read off the saved state, so nothing beyond the states is
saved; dh_{t-1} = da W_hh. Frozen rows pass dh through. dW_hh = sum_t da_t^T h_{t-1} in the launcher.
"""

import triton
import triton.language as tl
from fastrnn.kernels.common import (
    batch_rows,
    dh_recur_step,
    emit_h,
    grid_sync,
    load_dh,
    persistent_ids,
    resident_gate_blocks,
    row_matmul,
    state_slots,
    step_time,
    step_time_bwd,
    tanh,
)


@triton.jit
def rnn_fwd_step(
    t,
    s_in,
    s_out,
    j0,
    rows,
    row_mask,
    live,
    gx_ptr,
    w_ptr,
    hs_ptr,
    y_ptr,
    B,
    H,
    w_res,
    ACT: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One [BB, BH] tile (hidden units j0..j0+BH) of forward step t, reading state slot s_in and writing
    s_out (see state_slots). RESIDENT: ``w_res`` is the tile's resident [BHP, BH] block of W_hh^T."""
    cols = j0 + tl.arange(0, BH)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    h_rows = hs_ptr + (s_in * B + rows) * H  # [BB]
    a = tl.load(gx_ptr + (t * B + rows)[:, None] * H + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    a = row_matmul(a, h_rows, row_mask, w_ptr, 1, H, cols, col_mask, H, w_res, BK, BHP, RESIDENT, DOT_FP32)
    if ACT == 0:
        h = tanh(a)
    else:
        h = tl.maximum(a, 0.0)
    emit_h(t, s_in, s_out, h, cols, col_mask, rows, row_mask, live, hs_ptr, y_ptr, B, H)


@triton.jit(do_not_specialize=["T"])
def rnn_fwd_kernel(
    gx_ptr,
    w_ptr,
    len_ptr,
    hs_ptr,
    y_ptr,
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACT: tl.constexpr,
    SAVE: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence RNN forward for one batch tile. The first slot read (state_slots) of hs holds h0 on
    entry. SAVE: keep every state for the backward; else ping-pong states."""
    rows, row_mask, lens = batch_rows(tl.program_id(0), B, len_ptr, T, HAS_LEN, BB)
    for s in range(0, T):
        t = step_time(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, SAVE)
        live = t < lens  # [BB]
        for j0 in range(0, H, BH):
            rnn_fwd_step(
                t, s_in, s_out, j0, rows, row_mask, live, gx_ptr, w_ptr, hs_ptr, y_ptr, B, H, 0, ACT, BH, BK, BK,
                False, DOT_FP32,
            )  # fmt: skip
        tl.debug_barrier()


@triton.jit
def rnn_bwd_step(
    t,
    s_out,
    j0,
    rows,
    row_mask,
    live,
    dy_ptr,
    dh_ptr,
    dg_ptr,
    hs_ptr,
    B,
    H,
    ACT: tl.constexpr,
    BH: tl.constexpr,
):
    """One [BB, BH] tile of backward step t (state after it in hs[s_out]): the pre-activation gradient
    dg[t] and the dh carry."""
    cols = j0 + tl.arange(0, BH)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    live2 = live[:, None]
    dh = load_dh(t, cols, col_mask, rows, row_mask, live, dy_ptr, dh_ptr, B, H)  # [BB, BH]
    h = tl.load(hs_ptr + (s_out * B + rows)[:, None] * H + cols[None, :], mask=mask, other=0.0)
    if ACT == 0:
        da = dh * (1 - h * h)
    else:
        da = tl.where(h > 0, dh, 0.0)
    offs = (t * B + rows)[:, None] * H + cols[None, :]
    tl.store(dg_ptr + offs, tl.where(live2, da, 0.0), mask=mask)
    tl.store(dh_ptr + rows[:, None] * H + cols[None, :], tl.where(live2, 0.0, dh), mask=mask)


@triton.jit(do_not_specialize=["T"])
def rnn_bwd_kernel(
    dy_ptr,
    hs_ptr,
    w_ptr,
    len_ptr,
    dh_ptr,
    dg_ptr,
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACT: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence RNN backward for one batch tile. dh holds dh_n on entry, dh0 on exit."""
    rows, row_mask, lens = batch_rows(tl.program_id(0), B, len_ptr, T, HAS_LEN, BB)
    for s in range(0, T):
        t = step_time_bwd(s, T, REVERSE)
        _, s_out = state_slots(t, REVERSE, True)
        live = t < lens  # [BB]
        for j0 in range(0, H, BH):
            rnn_bwd_step(t, s_out, j0, rows, row_mask, live, dy_ptr, dh_ptr, dg_ptr, hs_ptr, B, H, ACT, BH)
        tl.debug_barrier()
        for p0 in range(0, H, BH):
            dh_recur_step(
                t, p0, rows, row_mask, dg_ptr, w_ptr, dh_ptr, B, H, H, 0, 0, 0, 0, 1, BH, BK, BK, False, DOT_FP32
            )
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def rnn_fwd_persistent_kernel(
    gx_ptr,
    w_ptr,
    len_ptr,
    hs_ptr,
    y_ptr,
    bar_ptr,
    T,
    B,
    H,
    N_H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACT: tl.constexpr,
    SAVE: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence RNN forward, persistent: program (slice, group) owns hidden tiles slice, slice + N_H, ...
    of batch tiles group, group + groups, ...; one grid barrier per step (see lstm_fwd_persistent_kernel).
    RESIDENT (one hidden tile per program): its W_hh rows are loaded once, before the time loop. Buffers as
    rnn_fwd_kernel; bar holds one zeroed int32 per batch group."""
    pid_h, group, n_groups = persistent_ids(N_H)
    bar = bar_ptr + group
    n_mine = tl.cdiv(tl.cdiv(B, BB) - group, n_groups)  # batch tiles group, group + n_groups, ...
    units = pid_h * BH + tl.arange(0, BH)
    w_res = 0
    if RESIDENT:
        w_res, _, _, _ = resident_gate_blocks(w_ptr, H, H, units, units < H, H, 1, H, 1, BHP)  # [BHP, BH]
    for s in range(0, T):
        t = step_time(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, SAVE)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            live = t < lens  # [BB]
            for j0 in range(pid_h * BH, H, N_H * BH):
                rnn_fwd_step(
                    t, s_in, s_out, j0, rows, row_mask, live, gx_ptr, w_ptr, hs_ptr, y_ptr, B, H, w_res, ACT, BH, BK,
                    BHP, RESIDENT, DOT_FP32,
                )  # fmt: skip
        grid_sync(bar, N_H, s + 1)


@triton.jit(do_not_specialize=["T"])
def rnn_bwd_persistent_kernel(
    dy_ptr,
    hs_ptr,
    w_ptr,
    len_ptr,
    dh_ptr,
    dg_ptr,
    bar_ptr,
    T,
    B,
    H,
    N_H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ACT: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence RNN backward, persistent, one grid barrier per step (see gru_bwd_persistent_kernel).
    RESIDENT (one tile per program): its W_hh columns are loaded once, before the time loop. Buffers as
    rnn_bwd_kernel."""
    pid_h, group, n_groups = persistent_ids(N_H)
    bar = bar_ptr + group
    n_mine = tl.cdiv(tl.cdiv(B, BB) - group, n_groups)  # batch tiles group, group + n_groups, ...
    units = pid_h * BH + tl.arange(0, BH)
    w0 = 0
    if RESIDENT:
        w0, _, _, _ = resident_gate_blocks(w_ptr, H, H, units, units < H, H, H, 1, 1, BHP)  # [BHP, BH]
    for s in range(0, T):
        t = step_time_bwd(s, T, REVERSE)
        _, s_out = state_slots(t, REVERSE, True)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            live = t < lens  # [BB]
            for j0 in range(pid_h * BH, H, N_H * BH):
                rnn_bwd_step(t, s_out, j0, rows, row_mask, live, dy_ptr, dh_ptr, dg_ptr, hs_ptr, B, H, ACT, BH)
        grid_sync(bar, N_H, s + 1)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            for p0 in range(pid_h * BH, H, N_H * BH):
                dh_recur_step(
                    t, p0, rows, row_mask, dg_ptr, w_ptr, dh_ptr, B, H, H, w0, 0, 0, 0, 1, BH, BK, BHP, RESIDENT,
                    DOT_FP32,
                )  # fmt: skip
