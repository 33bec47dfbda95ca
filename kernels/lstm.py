"""LSTM recurrence kernels: the step body, the forward kernel and the backward kernel.

Glossary:
    T time, B batch, H hidden, P = proj_size or H (size of h), G = 4H (gates i, f, g, o)
    BB batch rows per program, BH hidden/projection units per tile, BK reduction chunk (all >= 16)
    gx     [T, B, G]    input projection with both biases (input dtype)
    w      [G, P]       W_hh in the matmul dtype;  w_hr [P, H] projection weight (proj_size only)
    hs     [T+1, B, P]  fp32 hidden states: h before step t at hs[t + REVERSE], after it at hs[t + 1 - REVERSE]
                        ([2, B, P] ping-pong without SAVE, see common.state_slots)
    cs     [T+1, B, H]  fp32 cell states, indexed like hs
    gates  [T, B, G]    fp32 activated gates (i, f, g, o), saved for the backward (SAVE only)
    ms     [T, B, H]    fp32 m = o * tanh(c) (proj_size only; h = m @ W_hr^T; [1, B, H] without SAVE)
    y      [T, B, P]    output (input dtype), zero where t >= lengths[b]
    dy     [T, B, P]    upstream output gradient;  dh [B, P], dc [B, H] fp32 carried gradients
    dg     [T, B, G]    fp32 gradient of the gate pre-activations;  dhs [T, B, P] fp32 dL/dh_t (proj_size only)
    BP, BHP  P and H padded to powers of two: reduction blocks of resident weight slices (persistent RESIDENT)

Design: one program per batch tile runs the whole sequence; batch rows are independent, so the only
synchronisation is a block barrier between the phases of a step (every hidden tile of h_t must be written
before step t+1 reads it). Each phase loops over hidden tiles and calls a step body that handles one
[BB, BH] tile of one step. The persistent kernels (end of file, fastrnn/ops/strategy.py) spread the same step
bodies over programs that own slices of the hidden units, with a grid-wide barrier (common.grid_sync) in
place of the block barrier where a phase reads what other programs wrote.

Forward, per step t:  a = gx_t + h_{t-1} W^T;  i, f, o = sigmoid, g = tanh;  c_t = f c_{t-1} + i g;
    m_t = o tanh(c_t);  h_t = m_t (or m_t W_hr^T with proj_size, as a second phase).
Backward, per step (reverse order), dh = dy_t + carried dh, dc = carried dc:
    dm = dh (or dh W_hr);  dc += dm o (1 - tanh^2 c_t);  da_i = dc g i(1-i);  da_f = dc c_{t-1} f(1-f);
    da_g = dc i (1-g^2);  da_o = dm tanh(c_t) o(1-o);  dc_{t-1} = dc f;  dh_{t-1} = da W_hh.
Frozen rows (t >= lengths[b]) pass dh and dc through and get da = 0. dW_hh, dW_hr are single GEMMs over all
steps in the launcher (sum_t da_t^T h_{t-1}, sum_t dh_t^T m_t).
"""

import triton
import triton.language as tl
from fastrnn.kernels.common import (
    batch_rows,
    dh_recur_step,
    emit_h,
    grid_sync,
    load_dh,
    load_resident,
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
def lstm_fwd_step(
    t,
    s_in,
    s_out,
    m_slot,
    j0,
    rows,
    row_mask,
    live,
    gx_ptr,
    w_ptr,
    hs_ptr,
    cs_ptr,
    gates_ptr,
    ms_ptr,
    y_ptr,
    B,
    H,
    P,
    w_i,
    w_f,
    w_g,
    w_o,
    SAVE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One [BB, BH] tile (hidden units j0..j0+BH) of forward step t, reading state slot s_in and writing
    s_out (see state_slots); with proj_size m goes to ms[m_slot] for the projection phase. RESIDENT: w_i, w_f,
    w_g, w_o are the tile's resident [BP, BH] blocks of W_hh^T (common.load_resident)."""
    cols = j0 + tl.arange(0, BH)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    live2 = live[:, None]
    G = 4 * H
    h_rows = hs_ptr + (s_in * B + rows) * P  # [BB]
    g_offs = (t * B + rows)[:, None] * G + cols[None, :]  # [BB, BH]
    a_i = tl.load(gx_ptr + g_offs, mask=mask, other=0.0).to(tl.float32)
    a_f = tl.load(gx_ptr + g_offs + H, mask=mask, other=0.0).to(tl.float32)
    a_g = tl.load(gx_ptr + g_offs + 2 * H, mask=mask, other=0.0).to(tl.float32)
    a_o = tl.load(gx_ptr + g_offs + 3 * H, mask=mask, other=0.0).to(tl.float32)
    a_i = row_matmul(a_i, h_rows, row_mask, w_ptr, 1, P, cols, col_mask, P, w_i, BK, BP, RESIDENT, DOT_FP32)
    a_f = row_matmul(a_f, h_rows, row_mask, w_ptr + H * P, 1, P, cols, col_mask, P, w_f, BK, BP, RESIDENT, DOT_FP32)
    a_g = row_matmul(a_g, h_rows, row_mask, w_ptr + 2 * H * P, 1, P, cols, col_mask, P, w_g, BK, BP, RESIDENT, DOT_FP32)
    a_o = row_matmul(a_o, h_rows, row_mask, w_ptr + 3 * H * P, 1, P, cols, col_mask, P, w_o, BK, BP, RESIDENT, DOT_FP32)
    i = sigmoid(a_i)  # [BB, BH]
    f = sigmoid(a_f)
    g = tanh(a_g)
    o = sigmoid(a_o)
    if SAVE:
        tl.store(gates_ptr + g_offs, i, mask=mask)
        tl.store(gates_ptr + g_offs + H, f, mask=mask)
        tl.store(gates_ptr + g_offs + 2 * H, g, mask=mask)
        tl.store(gates_ptr + g_offs + 3 * H, o, mask=mask)

    c_in = cs_ptr + (s_in * B + rows)[:, None] * H + cols[None, :]
    c_out = cs_ptr + (s_out * B + rows)[:, None] * H + cols[None, :]
    c_prev = tl.load(c_in, mask=mask, other=0.0)  # [BB, BH]
    c = f * c_prev + i * g
    tl.store(c_out, tl.where(live2, c, c_prev), mask=mask)
    m = o * tanh(c)
    if HAS_PROJ:
        tl.store(ms_ptr + (m_slot * B + rows)[:, None] * H + cols[None, :], m, mask=mask)
    else:
        emit_h(t, s_in, s_out, m, cols, col_mask, rows, row_mask, live, hs_ptr, y_ptr, B, P)


@triton.jit
def lstm_proj_step(
    t,
    s_in,
    s_out,
    m_slot,
    p0,
    rows,
    row_mask,
    live,
    ms_ptr,
    w_hr_ptr,
    hs_ptr,
    y_ptr,
    B,
    H,
    P,
    w_res,
    BB: tl.constexpr,
    BP: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One [BB, BP] tile of h_t = m_t @ W_hr^T (proj_size), after every m tile of step t is written. RESIDENT:
    ``w_res`` is the tile's resident [BHP, BP] block of W_hr^T."""
    cols = p0 + tl.arange(0, BP)
    col_mask = cols < P
    h = tl.zeros([BB, BP], tl.float32)
    m_rows = ms_ptr + (m_slot * B + rows) * H  # [BB]
    h = row_matmul(h, m_rows, row_mask, w_hr_ptr, 1, H, cols, col_mask, H, w_res, BK, BHP, RESIDENT, DOT_FP32)
    emit_h(t, s_in, s_out, h, cols, col_mask, rows, row_mask, live, hs_ptr, y_ptr, B, P)


@triton.jit(do_not_specialize=["T"])
def lstm_fwd_kernel(
    gx_ptr,
    w_ptr,
    w_hr_ptr,
    len_ptr,
    hs_ptr,
    cs_ptr,
    gates_ptr,
    ms_ptr,
    y_ptr,
    T,
    B,
    H,
    P,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    SAVE: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence LSTM forward for one batch tile. The first slot read (state_slots) of hs and cs holds
    h0, c0 on entry. SAVE: keep every state and the gates for the backward; else ping-pong states, no gates."""
    rows, row_mask, lens = batch_rows(tl.program_id(0), B, len_ptr, T, HAS_LEN, BB)
    for s in range(0, T):
        t = step_time(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, SAVE)
        m_slot = t if SAVE else 0
        live = t < lens  # [BB]
        for j0 in range(0, H, BH):
            lstm_fwd_step(
                t,
                s_in,
                s_out,
                m_slot,
                j0,
                rows,
                row_mask,
                live,
                gx_ptr,
                w_ptr,
                hs_ptr,
                cs_ptr,
                gates_ptr,
                ms_ptr,
                y_ptr,
                B,
                H,
                P,
                0,
                0,
                0,
                0,
                SAVE,
                HAS_PROJ,
                BH,
                BK,
                BK,
                False,
                DOT_FP32,
            )
        tl.debug_barrier()
        if HAS_PROJ:
            for p0 in range(0, P, BH):
                lstm_proj_step(
                    t, s_in, s_out, m_slot, p0, rows, row_mask, live, ms_ptr, w_hr_ptr, hs_ptr, y_ptr, B, H, P, 0,
                    BB, BH, BK, BK, False, DOT_FP32,
                )  # fmt: skip
            tl.debug_barrier()


@triton.jit
def lstm_proj_bwd_step(t, p0, rows, row_mask, live, dy_ptr, dh_ptr, dhs_ptr, B, P, BP: tl.constexpr):
    """dL/dh_t for one [BB, BP] tile (proj_size): saved to dhs[t] (zero on frozen rows); the carry keeps it
    only on frozen rows (live rows get their dh_{t-1} from the gates)."""
    cols = p0 + tl.arange(0, BP)
    col_mask = cols < P
    mask = row_mask[:, None] & col_mask[None, :]
    live2 = live[:, None]
    dh = load_dh(t, cols, col_mask, rows, row_mask, live, dy_ptr, dh_ptr, B, P)  # [BB, BP]
    tl.store(dhs_ptr + (t * B + rows)[:, None] * P + cols[None, :], tl.where(live2, dh, 0.0), mask=mask)
    tl.store(dh_ptr + rows[:, None] * P + cols[None, :], tl.where(live2, 0.0, dh), mask=mask)


@triton.jit
def lstm_bwd_step(
    t,
    s_in,
    s_out,
    j0,
    rows,
    row_mask,
    live,
    dy_ptr,
    dh_ptr,
    dc_ptr,
    dg_ptr,
    dhs_ptr,
    gates_ptr,
    cs_ptr,
    w_hr_ptr,
    B,
    H,
    P,
    w_m,
    HAS_PROJ: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """One [BB, BH] tile of backward step t (states before/after it in cs[s_in], cs[s_out]): gate gradients
    dg[t] and the dc carry. RESIDENT (proj_size): ``w_m`` is the tile's resident [BP, BH] block of W_hr."""
    cols = j0 + tl.arange(0, BH)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    live2 = live[:, None]
    G = 4 * H
    if HAS_PROJ:
        dm = tl.zeros([BB, BH], tl.float32)
        dhs_rows = dhs_ptr + (t * B + rows) * P  # [BB]
        dm = row_matmul(dm, dhs_rows, row_mask, w_hr_ptr, H, 1, cols, col_mask, P, w_m, BK, BP, RESIDENT, DOT_FP32)
    else:
        dm = load_dh(t, cols, col_mask, rows, row_mask, live, dy_ptr, dh_ptr, B, P)  # [BB, BH]
        tl.store(dh_ptr + rows[:, None] * P + cols[None, :], tl.where(live2, 0.0, dm), mask=mask)
    g_offs = (t * B + rows)[:, None] * G + cols[None, :]  # [BB, BH]
    i = tl.load(gates_ptr + g_offs, mask=mask, other=0.0)
    f = tl.load(gates_ptr + g_offs + H, mask=mask, other=0.0)
    g = tl.load(gates_ptr + g_offs + 2 * H, mask=mask, other=0.0)
    o = tl.load(gates_ptr + g_offs + 3 * H, mask=mask, other=0.0)
    c = tl.load(cs_ptr + (s_out * B + rows)[:, None] * H + cols[None, :], mask=mask, other=0.0)
    c_prev = tl.load(cs_ptr + (s_in * B + rows)[:, None] * H + cols[None, :], mask=mask, other=0.0)
    dc_offs = rows[:, None] * H + cols[None, :]
    dc_carry = tl.load(dc_ptr + dc_offs, mask=mask, other=0.0)
    tc = tanh(c)
    dc = dc_carry + dm * o * (1 - tc * tc)
    tl.store(dg_ptr + g_offs, tl.where(live2, dc * g * i * (1 - i), 0.0), mask=mask)
    tl.store(dg_ptr + g_offs + H, tl.where(live2, dc * c_prev * f * (1 - f), 0.0), mask=mask)
    tl.store(dg_ptr + g_offs + 2 * H, tl.where(live2, dc * i * (1 - g * g), 0.0), mask=mask)
    tl.store(dg_ptr + g_offs + 3 * H, tl.where(live2, dm * tc * o * (1 - o), 0.0), mask=mask)
    tl.store(dc_ptr + dc_offs, tl.where(live2, dc * f, dc_carry), mask=mask)


@triton.jit(do_not_specialize=["T"])
def lstm_bwd_kernel(
    dy_ptr,
    gates_ptr,
    cs_ptr,
    w_ptr,
    w_hr_ptr,
    len_ptr,
    dh_ptr,
    dc_ptr,
    dg_ptr,
    dhs_ptr,
    T,
    B,
    H,
    P,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence LSTM backward for one batch tile. dh, dc hold dh_n, dc_n on entry, dh0, dc0 on exit."""
    rows, row_mask, lens = batch_rows(tl.program_id(0), B, len_ptr, T, HAS_LEN, BB)
    for s in range(0, T):
        t = step_time_bwd(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, True)
        live = t < lens  # [BB]
        if HAS_PROJ:
            for p0 in range(0, P, BH):
                lstm_proj_bwd_step(t, p0, rows, row_mask, live, dy_ptr, dh_ptr, dhs_ptr, B, P, BH)
            tl.debug_barrier()
        for j0 in range(0, H, BH):
            lstm_bwd_step(
                t,
                s_in,
                s_out,
                j0,
                rows,
                row_mask,
                live,
                dy_ptr,
                dh_ptr,
                dc_ptr,
                dg_ptr,
                dhs_ptr,
                gates_ptr,
                cs_ptr,
                w_hr_ptr,
                B,
                H,
                P,
                0,
                HAS_PROJ,
                BB,
                BH,
                BK,
                BK,
                False,
                DOT_FP32,
            )
        tl.debug_barrier()
        for p0 in range(0, P, BH):
            dh_recur_step(
                t, p0, rows, row_mask, dg_ptr, w_ptr, dh_ptr, B, 4 * H, P, 0, 0, 0, 0, 4, BH, BK, BK, False, DOT_FP32
            )
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def lstm_fwd_persistent_kernel(
    gx_ptr,
    w_ptr,
    w_hr_ptr,
    len_ptr,
    hs_ptr,
    cs_ptr,
    gates_ptr,
    ms_ptr,
    y_ptr,
    bar_ptr,
    T,
    B,
    H,
    P,
    N_H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    SAVE: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BP: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence LSTM forward, persistent: program (slice, group) owns the hidden tiles slice,
    slice + N_H, ... (all four gates of them, so c stays with its owner) and the projection tiles numbered
    alike, for the batch tiles group, group + groups, ...; the programs of a group exchange h_t through hs
    and meet at one grid barrier per step (two with proj_size: m_t, then h_t). RESIDENT (one hidden and one
    projection tile per program): its W_hh rows (and W_hr rows) are loaded once, before the time loop.
    Buffers as lstm_fwd_kernel; bar holds one zeroed int32 counter per batch group."""
    pid_h, group, n_groups = persistent_ids(N_H)
    bar = bar_ptr + group
    n_mine = tl.cdiv(tl.cdiv(B, BB) - group, n_groups)  # batch tiles group, group + n_groups, ...
    PHASES: tl.constexpr = 2 if HAS_PROJ else 1
    units = pid_h * BH + tl.arange(0, BH)  # the hidden (and projection) units of this program's tile
    w_i = 0
    w_f = 0
    w_g = 0
    w_o = 0
    w_r = 0
    if RESIDENT:
        w_i, w_f, w_g, w_o = resident_gate_blocks(w_ptr, H, P, units, units < H, P, 1, P, 4, BP)  # 4 x [BP, BH]
        if HAS_PROJ:
            w_r = load_resident(w_hr_ptr, 1, H, units, units < P, H, BHP)  # [BHP, BH]
    for s in range(0, T):
        t = step_time(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, SAVE)
        m_slot = t if SAVE else 0
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            live = t < lens  # [BB]
            for j0 in range(pid_h * BH, H, N_H * BH):
                lstm_fwd_step(
                    t, s_in, s_out, m_slot, j0, rows, row_mask, live, gx_ptr, w_ptr, hs_ptr, cs_ptr, gates_ptr,
                    ms_ptr, y_ptr, B, H, P, w_i, w_f, w_g, w_o, SAVE, HAS_PROJ, BH, BK, BP, RESIDENT, DOT_FP32,
                )  # fmt: skip
        grid_sync(bar, N_H, s * PHASES + 1)
        if HAS_PROJ:
            for i in range(0, n_mine):
                rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
                live = t < lens  # [BB]
                for p0 in range(pid_h * BH, P, N_H * BH):
                    lstm_proj_step(
                        t, s_in, s_out, m_slot, p0, rows, row_mask, live, ms_ptr, w_hr_ptr, hs_ptr, y_ptr, B, H, P,
                        w_r, BB, BH, BK, BHP, RESIDENT, DOT_FP32,
                    )  # fmt: skip
            grid_sync(bar, N_H, s * PHASES + 2)


@triton.jit(do_not_specialize=["T"])
def lstm_bwd_persistent_kernel(
    dy_ptr,
    gates_ptr,
    cs_ptr,
    w_ptr,
    w_hr_ptr,
    len_ptr,
    dh_ptr,
    dc_ptr,
    dg_ptr,
    dhs_ptr,
    bar_ptr,
    T,
    B,
    H,
    P,
    N_H,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    BK: tl.constexpr,
    BP: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Whole-sequence LSTM backward, persistent, tiles owned as in lstm_fwd_persistent_kernel. Per step the
    owner of a tile writes dG_t for its units, meets the others at the grid barrier, then forms its slice
    of dh_{t-1} = dG_t W_hh, which only it reads next (so one barrier per step; proj_size adds one after
    dL/dh_t, which every unit's dm needs). RESIDENT (one tile per program): the W_hh columns of its
    projection tile, every gate's rows (and the W_hr columns of its hidden tile), are loaded once, before the
    time loop. Buffers as lstm_bwd_kernel."""
    pid_h, group, n_groups = persistent_ids(N_H)
    bar = bar_ptr + group
    n_mine = tl.cdiv(tl.cdiv(B, BB) - group, n_groups)  # batch tiles group, group + n_groups, ...
    PHASES: tl.constexpr = 2 if HAS_PROJ else 1
    units = pid_h * BH + tl.arange(0, BH)  # the hidden (and projection) units of this program's tile
    w0 = 0
    w1 = 0
    w2 = 0
    w3 = 0
    w_m = 0
    if RESIDENT:
        w0, w1, w2, w3 = resident_gate_blocks(w_ptr, H, P, units, units < P, H, P, 1, 4, BHP)  # 4 x [BHP, BH]
        if HAS_PROJ:
            w_m = load_resident(w_hr_ptr, H, 1, units, units < H, P, BP)  # [BP, BH]
    for s in range(0, T):
        t = step_time_bwd(s, T, REVERSE)
        s_in, s_out = state_slots(t, REVERSE, True)
        if HAS_PROJ:
            for i in range(0, n_mine):
                rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
                live = t < lens  # [BB]
                for p0 in range(pid_h * BH, P, N_H * BH):
                    lstm_proj_bwd_step(t, p0, rows, row_mask, live, dy_ptr, dh_ptr, dhs_ptr, B, P, BH)
            grid_sync(bar, N_H, s * PHASES + 1)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            live = t < lens  # [BB]
            for j0 in range(pid_h * BH, H, N_H * BH):
                lstm_bwd_step(
                    t, s_in, s_out, j0, rows, row_mask, live, dy_ptr, dh_ptr, dc_ptr, dg_ptr, dhs_ptr, gates_ptr,
                    cs_ptr, w_hr_ptr, B, H, P, w_m, HAS_PROJ, BB, BH, BK, BP, RESIDENT, DOT_FP32,
                )  # fmt: skip
        grid_sync(bar, N_H, s * PHASES + PHASES)
        for i in range(0, n_mine):
            rows, row_mask, lens = batch_rows(group + i * n_groups, B, len_ptr, T, HAS_LEN, BB)
            for p0 in range(pid_h * BH, P, N_H * BH):
                dh_recur_step(
                    t, p0, rows, row_mask, dg_ptr, w_ptr, dh_ptr, B, 4 * H, P, w0, w1, w2, w3, 4, BH, BK, BHP, RESIDENT,
                    DOT_FP32,
                )  # fmt: skip
