"""LSTM recurrence kernels: the gate math, the tile steps and the four whole-sequence kernels (tiled and
persistent, forward and backward).

Glossary (see common.py for the tiling):
    T time, B batch, H hidden, P = proj_size or H (size of h), G = 4H (gates i, f, g, o)
    gx     [T, B, G]    input projection with both biases (input dtype)
    w      [G, P]       W_hh in the matmul dtype;  w_hr [P, H] projection weight (proj_size only)
    hs     [S, B, P]    fp32 hidden states, cs [S, B, H] fp32 cell states (common.state_slots: S = T+1 with SAVE,
                        else a [2, B, *] ping-pong)
    gates  [T, B, G]    fp32 activated gates (i, f, g, o), saved for the backward (SAVE only)
    ms     [T, B, H]    fp32 m = o * tanh(c) (proj_size with SAVE; h = m W_hr^T)
    y      [T, B, P]    output (input dtype), zero where t >= lengths[b]
    xh     [2, B, P]    h_t in the matmul dtype, exchanged between programs (xm [2, B, H]: m_t, proj_size only)
    flags  [groups, N_H] int32 per-program phase counters (zero at launch)
    dy     [T, B, P]    upstream output gradient;  dh [B, P], dc [B, H] fp32 carries (dh_n, dc_n in; dh0, dc0 out)
    dg     [T, B, G]    fp32 gradient of the gate pre-activations;  dhs [T, B, P] fp32 dL/dh_t (proj_size only)
    xz     [2, NT, B, P] fp32 partials of dh_{t-1} = dG_t W_hh, one per unit tile (NT = cdiv(H, BU));
                        xd [2, B, P] dL/dh_t in the matmul dtype, exchanged (proj_size only)

Forward, per step t:  a = gx_t + h_{t-1} W^T;  i, f, o = sigmoid, g = tanh;  c_t = f c_{t-1} + i g;
    m_t = o tanh(c_t);  h_t = m_t (or m_t W_hr^T with proj_size, as a second phase).
Backward, per step (reverse order), dh = dy_t + carried dh, dc = carried dc:
    dm = dh (or dh W_hr);  dc += dm o (1 - tanh^2 c_t);  da_i = dc g i(1-i);  da_f = dc c_{t-1} f(1-f);
    da_g = dc i (1-g^2);  da_o = dm tanh(c_t) o(1-o);  dc_{t-1} = dc f;  dh_{t-1} = da W_hh.
Frozen columns (t >= lengths[b]) keep their state, pass dh and dc through and get da = 0. dW_hh and dW_hr are
GEMMs over all steps in the launcher (sum_t da_t^T h_{t-1}, sum_t dh_t^T m_t).
"""

import triton
import triton.language as tl
from fastrnn.kernels.common import (
    backward_loop,
    carried_dh,
    emit_h,
    forward_loop,
    gate_rows,
    join_gates,
    load_tile,
    recurrent_gates,
    scatter_partials,
    set_carry,
    sigmoid,
    slice_matmul,
    slot_base,
    tanh,
    tile_offs,
    tile_step,
    wait_for,
)


@triton.jit
def lstm_cell(a_i, a_f, a_g, a_o, c_prev):
    """The gate math of one step: activated gates, c_t and m_t = o tanh(c_t)."""
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    g = tanh(a_g)
    o = sigmoid(a_o)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * tanh(c)


@triton.jit
def lstm_cell_grad(dm, dc, i, f, g, o, c, c_prev):
    """Gradients of the gate pre-activations and of c_{t-1}, given dL/dm_t and the carried dL/dc_t."""
    tc = tanh(c)
    dc = dc + dm * o * (1 - tc * tc)
    return dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dm * tc * o * (1 - o), dc * f


@triton.jit
def lstm_fwd_tile(
    bufs, res, w_ptr, flags, target, s, j, b0, T, B, H, P, N_H,
    NG: tl.constexpr, NGS: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr, PERSISTENT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr,
    KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr, OPT: tl.constexpr,
):  # fmt: skip
    """Unit tile j of batch tile b0 at step s: gates from h_{t-1} (xh), c_t, and h_t (m_t with proj_size)."""
    gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, cs_ptr, gates_ptr, ms_ptr, xm_ptr = bufs
    t, s_in, s_out, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, j, b0, T, B, H, len_ptr, REVERSE, SAVE, HAS_LEN, False, BU, BN
    )
    g_row = slot_base(t, B, 4 * H)
    g_offs = tile_offs(cols, 4 * H, units)  # [BU, BN]
    c_offs = tile_offs(cols, H, units)
    x_i = load_tile(gx_ptr + g_row + g_offs, mask)
    x_f = load_tile(gx_ptr + g_row + (g_offs + H), mask)
    x_g = load_tile(gx_ptr + g_row + (g_offs + 2 * H), mask)
    x_o = load_tile(gx_ptr + g_row + (g_offs + 3 * H), mask)
    c_prev = load_tile(cs_ptr + slot_base(s_in, B, H) + c_offs, mask)
    h_prev = 0.0
    if HAS_LEN and not HAS_PROJ:
        h_prev = load_tile(hs_ptr + slot_base(s_in, B, P) + tile_offs(cols, P, units), mask)
    a_i, a_f, a_g, a_o = recurrent_gates(
        res, w_ptr, xh_ptr, flags, target, s, j, cols, col_mask, B, H, P, N_H,
        NG, NGS, PERSISTENT, RESIDENT, BU, BN, KC, NKC, NF, PREC,
    )  # fmt: skip
    i, f, g, o, c, m = lstm_cell(a_i + x_i, a_f + x_f, a_g + x_g, a_o + x_o, c_prev)
    if HAS_PROJ:
        tl.store(xm_ptr + slot_base(s % 2, B, H) + c_offs, m.to(xm_ptr.dtype.element_ty), mask=mask)
    else:
        emit_h(m, h_prev, live, t, s_out, s % 2, cols, units, mask, hs_ptr, y_ptr, xh_ptr, B, P)
    tl.store(cs_ptr + slot_base(s_out, B, H) + c_offs, tl.where(live, c, c_prev), mask=mask)
    if SAVE:
        tl.store(gates_ptr + g_row + g_offs, i, mask=mask)
        tl.store(gates_ptr + g_row + (g_offs + H), f, mask=mask)
        tl.store(gates_ptr + g_row + (g_offs + 2 * H), g, mask=mask)
        tl.store(gates_ptr + g_row + (g_offs + 3 * H), o, mask=mask)
        if HAS_PROJ:
            tl.store(ms_ptr + slot_base(t, B, H) + c_offs, m, mask=mask)


@triton.jit
def lstm_proj_tile(
    bufs, res_r, w_hr_ptr, flags, target, s, q0, b0, T, B, H, P, N_H,
    REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_LEN: tl.constexpr, PERSISTENT: tl.constexpr,
    RESIDENT: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr,
    NF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Projection units q0 .. q0 + BQ of batch tile b0 at step s: h_t = m_t W_hr^T, m_t from every program (xm)."""
    gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, cs_ptr, gates_ptr, ms_ptr, xm_ptr = bufs
    t, s_in, s_out, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, q0 // BQ, b0, T, B, P, len_ptr, REVERSE, SAVE, HAS_LEN, False, BQ, BN
    )
    h_prev = 0.0
    if HAS_LEN:
        h_prev = load_tile(hs_ptr + slot_base(s_in, B, P) + tile_offs(cols, P, units), mask)
    if PERSISTENT:
        wait_for(flags, N_H, target, NF)
    h = tl.zeros([BQ, BN], tl.float32)
    h = slice_matmul(
        h, res_r, w_hr_ptr, units.to(tl.int64) * H, unit_mask, 1, xm_ptr + slot_base(s % 2, B, H), cols * H, col_mask,
        H, KCH, NKCH, RESIDENT, PREC,
    )  # fmt: skip
    emit_h(h, h_prev, live, t, s_out, s % 2, cols, units, mask, hs_ptr, y_ptr, xh_ptr, B, P)


@triton.jit
def lstm_bwd_tile(
    bufs, res, res_r, w_ptr, w_hr_ptr, flags, target, s, j, b0, T, B, H, P, N_H,
    NG: tl.constexpr, NGS: tl.constexpr, REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr,
    PERSISTENT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
    NKC: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr,
    PREC: tl.constexpr, OPT: tl.constexpr,
):  # fmt: skip
    """Unit tile j of batch tile b0 at backward step s: dL/dm_t (from the partials, or with proj_size from dL/dh_t
    of every program via xd), the gate gradients dg[t], the dc carry, and the tile's partial of dh_{t-1}."""
    dy_ptr, len_ptr, dh_ptr, xz_ptr, gates_ptr, cs_ptr, dc_ptr, dg_ptr, dhs_ptr, xd_ptr = bufs
    t, s_in, s_out, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, j, b0, T, B, H, len_ptr, REVERSE, True, HAS_LEN, True, BU, BN
    )
    g_row = slot_base(t, B, 4 * H)
    g_offs = tile_offs(cols, 4 * H, units)
    dc_offs = tile_offs(cols, H, units)
    i = load_tile(gates_ptr + g_row + g_offs, mask)
    f = load_tile(gates_ptr + g_row + (g_offs + H), mask)
    g = load_tile(gates_ptr + g_row + (g_offs + 2 * H), mask)
    o = load_tile(gates_ptr + g_row + (g_offs + 3 * H), mask)
    c = load_tile(cs_ptr + slot_base(s_out, B, H) + dc_offs, mask)
    c_prev = load_tile(cs_ptr + slot_base(s_in, B, H) + dc_offs, mask)
    dc = load_tile(dc_ptr + dc_offs, mask)
    if HAS_PROJ:
        if PERSISTENT:
            wait_for(flags, N_H, target, NF)
        dm = tl.zeros([BU, BN], tl.float32)
        dm = slice_matmul(
            dm, res_r, w_hr_ptr, units.to(tl.int64), unit_mask, H, xd_ptr + slot_base(s % 2, B, P), cols * P, col_mask,
            P, KCH, NKCH, RESIDENT, PREC,
        )  # fmt: skip
    else:
        dm = carried_dh(
            bufs, flags, target, s, t, units, unit_mask, cols, col_mask, mask, live, B, H, P, N_H,
            PERSISTENT, BU, NF, NPC,
        )  # fmt: skip
        set_carry(bufs, cols, units, mask, B, P, tl.where(live, 0.0, dm))
    da_i, da_f, da_g, da_o, dc_prev = lstm_cell_grad(dm, dc, i, f, g, o, c, c_prev)
    da_i = tl.where(live, da_i, 0.0)
    da_f = tl.where(live, da_f, 0.0)
    da_g = tl.where(live, da_g, 0.0)
    da_o = tl.where(live, da_o, 0.0)
    rows, row_mask = gate_rows(j, H, NG, NGS, BU)
    n_tiles = tl.cdiv(H, BU)
    scatter_partials(
        xz_ptr + slot_base((s % 2) * n_tiles + j, B, P), cols * P, col_mask,
        join_gates(da_i, da_f, da_g, da_o, NGS, BU, BN), res, w_ptr, rows * P, row_mask, P, KC, NKC, RESIDENT, PREC,
    )  # fmt: skip
    tl.store(dc_ptr + dc_offs, tl.where(live, dc_prev, dc), mask=mask)
    tl.store(dg_ptr + g_row + g_offs, da_i, mask=mask)
    tl.store(dg_ptr + g_row + (g_offs + H), da_f, mask=mask)
    tl.store(dg_ptr + g_row + (g_offs + 2 * H), da_g, mask=mask)
    tl.store(dg_ptr + g_row + (g_offs + 3 * H), da_o, mask=mask)


@triton.jit
def lstm_proj_bwd_tile(
    bufs, flags, target, s, q0, b0, T, B, H, P, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, PERSISTENT: tl.constexpr, BU: tl.constexpr, BQ: tl.constexpr,
    BN: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr,
):  # fmt: skip
    """Projection units q0 .. q0 + BQ of batch tile b0 at backward step s (proj_size): dL/dh_t from the partials,
    saved to dhs[t] (zero on frozen columns) and exchanged through xd for every unit tile's dm."""
    dy_ptr, len_ptr, dh_ptr, xz_ptr, gates_ptr, cs_ptr, dc_ptr, dg_ptr, dhs_ptr, xd_ptr = bufs
    t, _, _, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, q0 // BQ, b0, T, B, P, len_ptr, REVERSE, True, HAS_LEN, True, BQ, BN
    )
    dh = carried_dh(
        bufs, flags, target, s, t, units, unit_mask, cols, col_mask, mask, live, B, H, P, N_H, PERSISTENT, BU, NF, NPC
    )
    set_carry(bufs, cols, units, mask, B, P, tl.where(live, 0.0, dh))
    dh = tl.where(live, dh, 0.0)
    offs = tile_offs(cols, P, units)
    tl.store(xd_ptr + slot_base(s % 2, B, P) + offs, dh.to(xd_ptr.dtype.element_ty), mask=mask)
    tl.store(dhs_ptr + slot_base(t, B, P) + offs, dh, mask=mask)


@triton.jit(do_not_specialize=["T"])
def lstm_fwd_kernel(
    gx_ptr, w_ptr, w_hr_ptr, len_ptr, hs_ptr, cs_ptr, gates_ptr, ms_ptr, y_ptr, xh_ptr, xm_ptr, flag_ptr,
    T, B, H, P, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr,
    RESIDENT: tl.constexpr, BU: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
    NKC: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence LSTM forward, tiled: one program per batch tile, every unit tile (common.forward_loop)."""
    forward_loop(
        lstm_fwd_tile, lstm_proj_tile, (gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, cs_ptr, gates_ptr, ms_ptr, xm_ptr),
        w_ptr, w_hr_ptr, flag_ptr, T, B, H, P, N_H, 4, 4, REVERSE, SAVE, HAS_LEN, HAS_PROJ, False, RESIDENT,
        BU, BQ, BN, KC, NKC, KCH, NKCH, NF, PREC, 0,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def lstm_fwd_persistent_kernel(
    gx_ptr, w_ptr, w_hr_ptr, len_ptr, hs_ptr, cs_ptr, gates_ptr, ms_ptr, y_ptr, xh_ptr, xm_ptr, flag_ptr,
    T, B, H, P, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr,
    RESIDENT: tl.constexpr, BU: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
    NKC: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence LSTM forward, persistent: N_H programs per batch group split the units and exchange h_t
    (and m_t) through xh (xm), one phase flag each (common.forward_loop)."""
    forward_loop(
        lstm_fwd_tile, lstm_proj_tile, (gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, cs_ptr, gates_ptr, ms_ptr, xm_ptr),
        w_ptr, w_hr_ptr, flag_ptr, T, B, H, P, N_H, 4, 4, REVERSE, SAVE, HAS_LEN, HAS_PROJ, True, RESIDENT,
        BU, BQ, BN, KC, NKC, KCH, NKCH, NF, PREC, 0,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def lstm_bwd_kernel(
    dy_ptr, gates_ptr, cs_ptr, w_ptr, w_hr_ptr, len_ptr, dh_ptr, dc_ptr, dg_ptr, dhs_ptr, xz_ptr, xd_ptr, flag_ptr,
    T, B, H, P, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr,
    RESIDENT: tl.constexpr, BU: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
    NKC: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence LSTM backward, tiled (common.backward_loop)."""
    backward_loop(
        lstm_bwd_tile, lstm_proj_bwd_tile,
        (dy_ptr, len_ptr, dh_ptr, xz_ptr, gates_ptr, cs_ptr, dc_ptr, dg_ptr, dhs_ptr, xd_ptr),
        w_ptr, w_hr_ptr, flag_ptr, T, B, H, P, N_H, 4, 4, REVERSE, HAS_LEN, HAS_PROJ, False, RESIDENT,
        BU, BQ, BN, KC, NKC, KCH, NKCH, NF, NPC, PREC, 0,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def lstm_bwd_persistent_kernel(
    dy_ptr, gates_ptr, cs_ptr, w_ptr, w_hr_ptr, len_ptr, dh_ptr, dc_ptr, dg_ptr, dhs_ptr, xz_ptr, xd_ptr, flag_ptr,
    T, B, H, P, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr,
    RESIDENT: tl.constexpr, BU: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
    NKC: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence LSTM backward, persistent: per step every unit tile publishes its partial of dh_{t-1}
    through xz and every owner sums the partials of its units (common.backward_loop)."""
    backward_loop(
        lstm_bwd_tile, lstm_proj_bwd_tile,
        (dy_ptr, len_ptr, dh_ptr, xz_ptr, gates_ptr, cs_ptr, dc_ptr, dg_ptr, dhs_ptr, xd_ptr),
        w_ptr, w_hr_ptr, flag_ptr, T, B, H, P, N_H, 4, 4, REVERSE, HAS_LEN, HAS_PROJ, True, RESIDENT,
        BU, BQ, BN, KC, NKC, KCH, NKCH, NF, NPC, PREC, 0,
    )  # fmt: skip
