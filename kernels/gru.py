"""GRU recurrence kernels: the gate math, the tile steps and the four whole-sequence kernels (tiled and
persistent, forward and backward).

Glossary (see common.py for the tiling):
    T time, B batch, H hidden (h is [B, H]), G = 3H (gates r, z, n; a slice has a fourth, zero gate slot)
    gx     [T, B, G]    input projection x W_ih^T + b_ih (input dtype); b_hh stays apart
    w      [G, H]       W_hh in the matmul dtype;  b [G] fp32 b_hh (zeros without bias)
    hs     [S, B, H]    fp32 hidden states (common.state_slots)
    gates  [T, B, 4H]   fp32 saved for the backward (SAVE only): r, z, n and hn = h_{t-1} W_hn^T + b_hn
    y      [T, B, H]    output (input dtype), zero where t >= lengths[b];  xh [2, B, H] h_t exchanged
    dy     [T, B, H]    upstream output gradient;  dh [B, H] fp32 carry (dh_n in, dh0 out)
    dgx    [T, B, G]    gradient of gx (input dtype);  dgh [T, B, G] fp32 gradient of h W_hh^T + b_hh
    xz     [2, NT, B, H] fp32 partials of dgh_t W_hh, one per unit tile

Forward, per step t (torch's semantics):  gh = h_{t-1} W_hh^T + b_hh;  r = sigmoid(x_r + gh_r);
    z = sigmoid(x_z + gh_z);  n = tanh(x_n + r hn) with hn = gh_n;  h_t = n + z (h_{t-1} - n).
Backward, per step (reverse order), dh = dy_t + carried dh:
    dn = dh (1-z) (1-n^2);  dz = dh (h_{t-1} - n) z(1-z);  dr = dn hn r(1-r);
    dgx = [dr, dz, dn];  dgh = [dr, dz, dn r];  dh_{t-1} = dh z + dgh W_hh.
Frozen columns (t >= lengths[b]) pass dh through and get zero gate gradients. dW_hh = sum_t dgh_t^T h_{t-1}
and db_hh = sum dgh are computed in the launcher. Saving r, z, n, hn trades memory for not recomputing the
recurrent GEMM in the backward.
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
    slot_base,
    tanh,
    tile_offs,
    tile_step,
)


@triton.jit
def gru_cell(a_r, a_z, x_n, hn, h_prev):
    """The gate math of one step: r, z, n and h_t."""
    r = sigmoid(a_r)
    z = sigmoid(a_z)
    n = tanh(x_n + r * hn)
    return r, z, n, n + z * (h_prev - n)


@triton.jit
def gru_cell_grad(dh, r, z, n, hn, h_prev):
    """Gradients of the gate pre-activations (dr, dz, dn) and the direct part of dh_{t-1}, given dL/dh_t."""
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    return dn * hn * r * (1 - r), dz, dn, dh * z


@triton.jit
def gru_fwd_tile(
    bufs, res, w_ptr, flags, target, s, j, b0, T, B, H, P, N_H,
    NG: tl.constexpr, NGS: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr, PERSISTENT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr,
    KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr, OPT: tl.constexpr,
):  # fmt: skip
    """Unit tile j of batch tile b0 at step s: r, z, n from h_{t-1} (xh) and h_t."""
    gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, b_ptr, gates_ptr = bufs
    t, s_in, s_out, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, j, b0, T, B, H, len_ptr, REVERSE, SAVE, HAS_LEN, False, BU, BN
    )
    g_ptrs = gx_ptr + slot_base(t, B, 3 * H) + tile_offs(cols, 3 * H, units)  # [BU, BN]
    x_r = load_tile(g_ptrs, mask) + tl.load(b_ptr + units, mask=unit_mask, other=0.0)[:, None]
    x_z = load_tile(g_ptrs + H, mask) + tl.load(b_ptr + H + units, mask=unit_mask, other=0.0)[:, None]
    x_n = load_tile(g_ptrs + 2 * H, mask)
    b_n = tl.load(b_ptr + 2 * H + units, mask=unit_mask, other=0.0)[:, None]
    h_prev = load_tile(hs_ptr + slot_base(s_in, B, H) + tile_offs(cols, H, units), mask)
    gh_r, gh_z, gh_n, _ = recurrent_gates(
        res, w_ptr, xh_ptr, flags, target, s, j, cols, col_mask, B, H, H, N_H,
        NG, NGS, PERSISTENT, RESIDENT, BU, BN, KC, NKC, NF, PREC,
    )  # fmt: skip
    hn = gh_n + b_n
    r, z, n, h = gru_cell(x_r + gh_r, x_z + gh_z, x_n, hn, h_prev)
    emit_h(h, h_prev, live, t, s_out, s % 2, cols, units, mask, hs_ptr, y_ptr, xh_ptr, B, H)
    if SAVE:
        s_ptrs = gates_ptr + slot_base(t, B, 4 * H) + tile_offs(cols, 4 * H, units)
        tl.store(s_ptrs, r, mask=mask)
        tl.store(s_ptrs + H, z, mask=mask)
        tl.store(s_ptrs + 2 * H, n, mask=mask)
        tl.store(s_ptrs + 3 * H, hn, mask=mask)


@triton.jit
def gru_bwd_tile(
    bufs, res, res_r, w_ptr, w_hr_ptr, flags, target, s, j, b0, T, B, H, P, N_H,
    NG: tl.constexpr, NGS: tl.constexpr, REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr,
    PERSISTENT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
    NKC: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr,
    PREC: tl.constexpr, OPT: tl.constexpr,
):  # fmt: skip
    """Unit tile j of batch tile b0 at backward step s: dh_t from the partials, dgx[t], dgh[t], the direct dh carry
    and the tile's partial of dgh_t W_hh."""
    dy_ptr, len_ptr, dh_ptr, xz_ptr, gates_ptr, hs_ptr, dgx_ptr, dgh_ptr = bufs
    t, s_in, _, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, j, b0, T, B, H, len_ptr, REVERSE, True, HAS_LEN, True, BU, BN
    )
    s_ptrs = gates_ptr + slot_base(t, B, 4 * H) + tile_offs(cols, 4 * H, units)
    r = load_tile(s_ptrs, mask)
    z = load_tile(s_ptrs + H, mask)
    n = load_tile(s_ptrs + 2 * H, mask)
    hn = load_tile(s_ptrs + 3 * H, mask)
    h_prev = load_tile(hs_ptr + slot_base(s_in, B, H) + tile_offs(cols, H, units), mask)
    dh = carried_dh(
        bufs, flags, target, s, t, units, unit_mask, cols, col_mask, mask, live, B, H, H, N_H, PERSISTENT, BU, NF, NPC
    )
    dr, dz, dn, dh_direct = gru_cell_grad(dh, r, z, n, hn, h_prev)
    dr = tl.where(live, dr, 0.0)
    dz = tl.where(live, dz, 0.0)
    dn = tl.where(live, dn, 0.0)
    rows, row_mask = gate_rows(j, H, NG, NGS, BU)
    n_tiles = tl.cdiv(H, BU)
    scatter_partials(
        xz_ptr + slot_base((s % 2) * n_tiles + j, B, H), cols * H, col_mask,
        join_gates(dr, dz, dn * r, tl.zeros([BU, BN], tl.float32), NGS, BU, BN), res, w_ptr, rows * H, row_mask, H,
        KC, NKC, RESIDENT, PREC,
    )  # fmt: skip
    set_carry(bufs, cols, units, mask, B, H, tl.where(live, dh_direct, dh))
    g_row = slot_base(t, B, 3 * H)
    g_offs = tile_offs(cols, 3 * H, units)
    out_ty = dgx_ptr.dtype.element_ty
    tl.store(dgx_ptr + g_row + g_offs, dr.to(out_ty), mask=mask)
    tl.store(dgx_ptr + g_row + (g_offs + H), dz.to(out_ty), mask=mask)
    tl.store(dgx_ptr + g_row + (g_offs + 2 * H), dn.to(out_ty), mask=mask)
    tl.store(dgh_ptr + g_row + g_offs, dr, mask=mask)
    tl.store(dgh_ptr + g_row + (g_offs + H), dz, mask=mask)
    tl.store(dgh_ptr + g_row + (g_offs + 2 * H), dn * r, mask=mask)


@triton.jit(do_not_specialize=["T"])
def gru_fwd_kernel(
    gx_ptr, w_ptr, b_ptr, len_ptr, hs_ptr, gates_ptr, y_ptr, xh_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, SAVE: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr,
    BN: tl.constexpr, KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence GRU forward, tiled: one program per batch tile, every unit tile (common.forward_loop)."""
    forward_loop(
        gru_fwd_tile, None, (gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, b_ptr, gates_ptr), w_ptr, w_ptr, flag_ptr,
        T, B, H, H, N_H, 3, 4, REVERSE, SAVE, HAS_LEN, False, False, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC, NF,
        PREC, 0,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def gru_fwd_persistent_kernel(
    gx_ptr, w_ptr, b_ptr, len_ptr, hs_ptr, gates_ptr, y_ptr, xh_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, SAVE: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr,
    BN: tl.constexpr, KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence GRU forward, persistent: N_H programs per batch group split the units and exchange h_t
    through xh (common.forward_loop)."""
    forward_loop(
        gru_fwd_tile, None, (gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, b_ptr, gates_ptr), w_ptr, w_ptr, flag_ptr,
        T, B, H, H, N_H, 3, 4, REVERSE, SAVE, HAS_LEN, False, True, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC, NF,
        PREC, 0,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def gru_bwd_kernel(
    dy_ptr, gates_ptr, hs_ptr, w_ptr, len_ptr, dh_ptr, dgx_ptr, dgh_ptr, xz_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr,
    KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence GRU backward, tiled (common.backward_loop)."""
    backward_loop(
        gru_bwd_tile, None, (dy_ptr, len_ptr, dh_ptr, xz_ptr, gates_ptr, hs_ptr, dgx_ptr, dgh_ptr), w_ptr, w_ptr,
        flag_ptr, T, B, H, H, N_H, 3, 4, REVERSE, HAS_LEN, False, False, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC,
        NF, NPC, PREC, 0,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def gru_bwd_persistent_kernel(
    dy_ptr, gates_ptr, hs_ptr, w_ptr, len_ptr, dh_ptr, dgx_ptr, dgh_ptr, xz_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr,
    KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence GRU backward, persistent: partials of dgh_t W_hh exchanged through xz
    (common.backward_loop)."""
    backward_loop(
        gru_bwd_tile, None, (dy_ptr, len_ptr, dh_ptr, xz_ptr, gates_ptr, hs_ptr, dgx_ptr, dgh_ptr), w_ptr, w_ptr,
        flag_ptr, T, B, H, H, N_H, 3, 4, REVERSE, HAS_LEN, False, True, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC,
        NF, NPC, PREC, 0,
    )  # fmt: skip
