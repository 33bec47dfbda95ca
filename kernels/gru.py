"""GRU recurrence kernels: the step body, the forward kernel and the backward kernel.

Glossary:
    T time, B batch, H hidden (h is [B, H]), G = 3H (gates r, z, n)
    BB batch rows per program, BH hidden units per tile, BK reduction chunk (all >= 16)
    gx     [T, B, G]    input projection x W_ih^T + b_ih (input dtype); b_hh stays apart
    w      [G, H]       W_hh in the matmul dtype;  b [G] fp32 b_hh (optional)
    hs     [T+1, B, H]  fp32 hidden states: h before step t at hs[t + REVERSE], after it at hs[t + 1 - REVERSE]
                        ([2, B, H] ping-pong without SAVE, see common.state_slots)
    gates  [T, B, 4H]   fp32 saved for the backward (SAVE only): r, z, n and hn = h_{t-1} W_hn^T + b_hn
    y      [T, B, H]    output (input dtype), zero where t >= lengths[b]
    dy     [T, B, H]    upstream output gradient;  dh [B, H] fp32 carried gradient
    dgx    [T, B, G]    gradient of gx (input dtype)
    dgh    [T, B, G]    fp32 gradient of the recurrent pre-activations h W_hh^T + b_hh
    BHP    H padded to a power of two: the reduction block of a resident W_hh slice (persistent RESIDENT only)

Design as in lstm.py: one program per batch tile runs the whole sequence with a block barrier between the
phases of a step; the step bodies handle one [BB, BH] tile of one step.

Forward, per step t (torch's semantics):  gh = h_{t-1} W_hh^T + b_hh;  r = sigmoid(x_r + gh_r);
    z = sigmoid(x_z + gh_z);  n = tanh(x_n + r hn) with hn = gh_n;  h_t = n + z (h_{t-1} - n).
Backward, per step (reverse order), dh = dy_t + carried dh:
    dn = dh (1-z) (1-n^2);  dz = dh (h_{t-1} - n) z(1-z);  dr = dn hn r(1-r);
    dgx = [dr, dz, dn];  dgh = [dr, dz, dn r];  dh_{t-1} = dh z + dgh W_hh.
Frozen rows (t >= lengths[b]) pass dh through and get zero gate gradients. dW_hh = sum_t dgh_t^T h_{t-1}
(one GEMM) and db_hh = sum dgh are computed in the launcher. Saving r, z, n, hn (4H floats per row and
step, plus the states) trades memory for not recomputing the recurrent GEMM in the backward.
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
    sigmoid,
    state_slots,
    step_time,
    step_time_bwd,
    tanh,
)


@triton.jit
def gru_fwd_step(
    t,
    s_in,
    s_out,
    j0,
    rows,
    row_mask,
    live,
    gx_ptr,
    w_ptr,
    b_ptr,
    hs_ptr,
    gates_ptr,
    y_ptr,
    B,
    H,
    w_r,
    w_z,
    w_n,
    SAVE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One [BB, BH] tile (hidden units j0..j0+BH) of forward step t, reading state slot s_in and writing
    s_out (see state_slots). RESIDENT: w_r, w_z, w_n are the tile's resident [BHP, BH] blocks of W_hh^T."""
    cols = j0 + tl.arange(0, BH)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    G = 3 * H
    h_rows = hs_ptr + (s_in * B + rows) * H  # [BB]
    g_offs = (t * B + rows)[:, None] * G + cols[None, :]  # [BB, BH]
    a_r = tl.load(gx_ptr + g_offs, mask=mask, other=0.0).to(tl.float32)
    a_z = tl.load(gx_ptr + g_offs + H, mask=mask, other=0.0).to(tl.float32)
    x_n = tl.load(gx_ptr + g_offs + 2 * H, mask=mask, other=0.0).to(tl.float32)
    hn = tl.zeros([BB, BH], tl.float32)
    a_r = row_matmul(a_r, h_rows, row_mask, w_ptr, 1, H, cols, col_mask, H, w_r, BK, BHP, RESIDENT, DOT_FP32)
    a_z = row_matmul(a_z, h_rows, row_mask, w_ptr + H * H, 1, H, cols, col_mask, H, w_z, BK, BHP, RESIDENT, DOT_FP32)
    hn = row_matmul(hn, h_rows, row_mask, w_ptr + 2 * H * H, 1, H, cols, col_mask, H, w_n, BK, BHP, RESIDENT, DOT_FP32)
    if HAS_BIAS:
        a_r += tl.load(b_ptr + cols, mask=col_mask, other=0.0)[None, :]
        a_z += tl.load(b_ptr + H + cols, mask=col_mask, other=0.0)[None, :]
        hn += tl.load(b_ptr + 2 * H + cols, mask=col_mask, other=0.0)[None, :]
    r = sigmoid(a_r)  # [BB, BH]
    z = sigmoid(a_z)
    n = tanh(x_n + r * hn)
    h_prev = tl.load(h_rows[:, None] + cols[None, :], mask=mask, other=0.0)  # [BB, BH]
    h = n + z * (h_prev - n)
    s_offs = (t * B + rows)[:, None] * (4 * H) + cols[None, :]
    if SAVE:
        tl.store(gates_ptr + s_offs, r, mask=mask)
        tl.store(gates_ptr + s_offs + H, z, mask=mask)
        tl.store(gates_ptr + s_offs + 2 * H, n, mask=mask)
        tl.store(gates_ptr + s_offs + 3 * H, hn, mask=mask)
    emit_h(t, s_in, s_out, h, cols, col_mask, rows, row_mask, live, hs_ptr, y_ptr, B, H)


@triton.jit(do_not_specialize=["T"])
def gru_fwd_kernel(
    gx_ptr,
    w_ptr,
    b_ptr,
    len_ptr,
    hs_ptr,
    gates_ptr,
    y_ptr,
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence GRU forward for one batch tile. The first slot read (state_slots) of hs holds h0 on
    entry. SAVE: keep every state and the gates for the backward; else ping-pong states, no gates."""
    rows, row_mask, lens = batch_rows(tl.program_id(0), B, len_ptr, T, HAS_LEN, BB)
    for s in range(0, T):
        t = step_time(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, SAVE)
        live = t < lens  # [BB]
        for j0 in range(0, H, BH):
            gru_fwd_step(
                t,
                s_in,
                s_out,
                j0,
                rows,
                row_mask,
                live,
                gx_ptr,
                w_ptr,
                b_ptr,
                hs_ptr,
                gates_ptr,
                y_ptr,
                B,
                H,
                0,
                0,
                0,
                SAVE,
                HAS_BIAS,
                BB,
                BH,
                BK,
                BK,
                False,
                DOT_FP32,
            )
        tl.debug_barrier()


@triton.jit
def gru_bwd_step(
    t,
    s_in,
    j0,
    rows,
    row_mask,
    live,
    dy_ptr,
    dh_ptr,
    dgx_ptr,
    dgh_ptr,
    gates_ptr,
    hs_ptr,
    B,
    H,
    BH: tl.constexpr,
):
    """One [BB, BH] tile of backward step t (state before it in hs[s_in]): gate gradients dgx[t], dgh[t]
    and the direct dh carry."""
    cols = j0 + tl.arange(0, BH)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    live2 = live[:, None]
    G = 3 * H
    dh = load_dh(t, cols, col_mask, rows, row_mask, live, dy_ptr, dh_ptr, B, H)  # [BB, BH]
    s_offs = (t * B + rows)[:, None] * (4 * H) + cols[None, :]
    r = tl.load(gates_ptr + s_offs, mask=mask, other=0.0)
    z = tl.load(gates_ptr + s_offs + H, mask=mask, other=0.0)
    n = tl.load(gates_ptr + s_offs + 2 * H, mask=mask, other=0.0)
    hn = tl.load(gates_ptr + s_offs + 3 * H, mask=mask, other=0.0)
    h_prev = tl.load(hs_ptr + (s_in * B + rows)[:, None] * H + cols[None, :], mask=mask, other=0.0)
    dn = tl.where(live2, dh * (1 - z) * (1 - n * n), 0.0)
    dz = tl.where(live2, dh * (h_prev - n) * z * (1 - z), 0.0)
    dr = dn * hn * r * (1 - r)
    g_offs = (t * B + rows)[:, None] * G + cols[None, :]
    out_ty = dgx_ptr.dtype.element_ty
    tl.store(dgx_ptr + g_offs, dr.to(out_ty), mask=mask)
    tl.store(dgx_ptr + g_offs + H, dz.to(out_ty), mask=mask)
    tl.store(dgx_ptr + g_offs + 2 * H, dn.to(out_ty), mask=mask)
    tl.store(dgh_ptr + g_offs, dr, mask=mask)
    tl.store(dgh_ptr + g_offs + H, dz, mask=mask)
    tl.store(dgh_ptr + g_offs + 2 * H, dn * r, mask=mask)
    tl.store(dh_ptr + rows[:, None] * H + cols[None, :], tl.where(live2, dh * z, dh), mask=mask)


@triton.jit(do_not_specialize=["T"])
def gru_bwd_kernel(
    dy_ptr,
    gates_ptr,
    hs_ptr,
    w_ptr,
    len_ptr,
    dh_ptr,
    dgx_ptr,
    dgh_ptr,
    T,
    B,
    H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence GRU backward for one batch tile. dh holds dh_n on entry, dh0 on exit."""
    rows, row_mask, lens = batch_rows(tl.program_id(0), B, len_ptr, T, HAS_LEN, BB)
    for s in range(0, T):
        t = step_time_bwd(s, T, REVERSE)
        s_in, _ = state_slots(t, REVERSE, True)
        live = t < lens  # [BB]
        for j0 in range(0, H, BH):
            gru_bwd_step(
                t, s_in, j0, rows, row_mask, live, dy_ptr, dh_ptr, dgx_ptr, dgh_ptr, gates_ptr, hs_ptr, B, H, BH
            )
        tl.debug_barrier()
        for p0 in range(0, H, BH):
            dh_recur_step(
                t, p0, rows, row_mask, dgh_ptr, w_ptr, dh_ptr, B, 3 * H, H, 0, 0, 0, 0, 3, BH, BK, BK, False, DOT_FP32
            )
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def gru_fwd_persistent_kernel(
    gx_ptr,
    w_ptr,
    b_ptr,
    len_ptr,
    hs_ptr,
    gates_ptr,
    y_ptr,
    bar_ptr,
    T,
    B,
    H,
    N_H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence GRU forward, persistent: program (slice, group) owns hidden tiles slice, slice + N_H, ...
    (all three gates) of batch tiles group, group + groups, ...; one grid barrier per step (see
    lstm_fwd_persistent_kernel). RESIDENT (one hidden tile per program): its W_hh rows are loaded once, before
    the time loop. Buffers as gru_fwd_kernel; bar holds one zeroed int32 per batch group."""
    pid_h, group, n_groups = persistent_ids(N_H)
    bar = bar_ptr + group
    n_mine = tl.cdiv(tl.cdiv(B, BB) - group, n_groups)  # batch tiles group, group + n_groups, ...
    units = pid_h * BH + tl.arange(0, BH)
    w_r = 0
    w_z = 0
    w_n = 0
    if RESIDENT:
        w_r, w_z, w_n, _ = resident_gate_blocks(w_ptr, H, H, units, units < H, H, 1, H, 3, BHP)  # 3 x [BHP, BH]
    for s in range(0, T):
        t = step_time(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, SAVE)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            live = t < lens  # [BB]
            for j0 in range(pid_h * BH, H, N_H * BH):
                gru_fwd_step(
                    t, s_in, s_out, j0, rows, row_mask, live, gx_ptr, w_ptr, b_ptr, hs_ptr, gates_ptr, y_ptr, B, H,
                    w_r, w_z, w_n, SAVE, HAS_BIAS, BB, BH, BK, BHP, RESIDENT, DOT_FP32,
                )  # fmt: skip
        grid_sync(bar, N_H, s + 1)


@triton.jit(do_not_specialize=["T"])
def gru_bwd_persistent_kernel(
    dy_ptr,
    gates_ptr,
    hs_ptr,
    w_ptr,
    len_ptr,
    dh_ptr,
    dgx_ptr,
    dgh_ptr,
    bar_ptr,
    T,
    B,
    H,
    N_H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence GRU backward, persistent, tiles owned as in gru_fwd_persistent_kernel: gate gradients of
    its units, the grid barrier, then its slice of dh_{t-1} += dgh_t W_hh (read next only by itself), so one
    barrier per step. RESIDENT (one tile per program): the W_hh columns of its units, every gate's rows, are
    loaded once, before the time loop. Buffers as gru_bwd_kernel."""
    pid_h, group, n_groups = persistent_ids(N_H)
    bar = bar_ptr + group
    n_mine = tl.cdiv(tl.cdiv(B, BB) - group, n_groups)  # batch tiles group, group + n_groups, ...
    units = pid_h * BH + tl.arange(0, BH)
    w0 = 0
    w1 = 0
    w2 = 0
    if RESIDENT:
        w0, w1, w2, _ = resident_gate_blocks(w_ptr, H, H, units, units < H, H, H, 1, 3, BHP)  # 3 x [BHP, BH]
    for s in range(0, T):
        t = step_time_bwd(s, T, REVERSE)
        s_in, _ = state_slots(t, REVERSE, True)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            live = t < lens  # [BB]
            for j0 in range(pid_h * BH, H, N_H * BH):
                gru_bwd_step(
                    t, s_in, j0, rows, row_mask, live, dy_ptr, dh_ptr, dgx_ptr, dgh_ptr, gates_ptr, hs_ptr, B, H, BH
                )
        grid_sync(bar, N_H, s + 1)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            for p0 in range(pid_h * BH, H, N_H * BH):
                dh_recur_step(
                    t, p0, rows, row_mask, dgh_ptr, w_ptr, dh_ptr, B, 3 * H, H, w0, w1, w2, 0, 3, BH, BK, BHP, RESIDENT,
                    DOT_FP32,
                )  # fmt: skip
