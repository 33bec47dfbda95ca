"""Elman RNN (tanh / relu) recurrence kernels: the activation, the tile steps and the four whole-sequence kernels
(tiled and persistent, forward and backward).

Glossary (see common.py for the tiling):
    T time, B batch, H hidden (h is [B, H]), G = H (one gate: a slice is BU rows of W_hh)
    ACT    0 for tanh, 1 for relu
    gx     [T, B, H]    input projection with both biases (input dtype)
    w      [H, H]       W_hh in the matmul dtype
    hs     [S, B, H]    fp32 hidden states (common.state_slots);  xh [2, B, H] h_t exchanged between programs
    y      [T, B, H]    output (input dtype), zero where t >= lengths[b]
    dy     [T, B, H]    upstream output gradient;  dh [B, H] fp32 carry (dh_n in, dh0 out)
    dg     [T, B, H]    fp32 gradient of the pre-activation;  xz [2, NT, B, H] fp32 partials of dg_t W_hh

Forward: h_t = act(gx_t + h_{t-1} W_hh^T). Backward: da = dh act'(h_t), with tanh' = 1 - h_t^2 and
relu' = [h_t > 0], both read off the saved state, so nothing beyond the states is saved;
dh_{t-1} = da W_hh. Frozen columns pass dh through. dW_hh = sum_t da_t^T h_{t-1} in the launcher.
"""

import triton
import triton.language as tl
from fastrnn.kernels.common import (
    backward_loop,
    carried_dh,
    emit_h,
    forward_loop,
    gate_rows,
    load_tile,
    recurrent_gates,
    scatter_partials,
    set_carry,
    slot_base,
    tanh,
    tile_offs,
    tile_step,
)


@triton.jit
def rnn_act(a, ACT: tl.constexpr):
    if ACT == 0:
        h = tanh(a)
    else:
        h = tl.maximum(a, 0.0)
    return h


@triton.jit
def rnn_act_grad(dh, h, ACT: tl.constexpr):
    """dL/da from dL/dh_t and h_t = act(a)."""
    if ACT == 0:
        da = dh * (1 - h * h)
    else:
        da = tl.where(h > 0, dh, 0.0)
    return da


@triton.jit
def rnn_fwd_tile(
    bufs, res, w_ptr, flags, target, s, j, b0, T, B, H, P, N_H,
    NG: tl.constexpr, NGS: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr, PERSISTENT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr,
    KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr, OPT: tl.constexpr,
):  # fmt: skip
    """Unit tile j of batch tile b0 at step s: h_t = act(gx_t + h_{t-1} W_hh^T) (OPT is ACT)."""
    gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr = bufs
    t, s_in, s_out, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, j, b0, T, B, H, len_ptr, REVERSE, SAVE, HAS_LEN, False, BU, BN
    )
    offs = tile_offs(cols, H, units)
    a = load_tile(gx_ptr + slot_base(t, B, H) + offs, mask)
    h_prev = 0.0
    if HAS_LEN:
        h_prev = load_tile(hs_ptr + slot_base(s_in, B, H) + offs, mask)
    a += recurrent_gates(
        res, w_ptr, xh_ptr, flags, target, s, j, cols, col_mask, B, H, H, N_H,
        NG, NGS, PERSISTENT, RESIDENT, BU, BN, KC, NKC, NF, PREC,
    )[0]  # fmt: skip
    emit_h(rnn_act(a, OPT), h_prev, live, t, s_out, s % 2, cols, units, mask, hs_ptr, y_ptr, xh_ptr, B, H)


@triton.jit
def rnn_bwd_tile(
    bufs, res, res_r, w_ptr, w_hr_ptr, flags, target, s, j, b0, T, B, H, P, N_H,
    NG: tl.constexpr, NGS: tl.constexpr, REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, HAS_PROJ: tl.constexpr,
    PERSISTENT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr,
    NKC: tl.constexpr, KCH: tl.constexpr, NKCH: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr,
    PREC: tl.constexpr, OPT: tl.constexpr,
):  # fmt: skip
    """Unit tile j of batch tile b0 at backward step s: dh_t from the partials, da = dg[t], the frozen-column
    carry and the tile's partial of da_t W_hh."""
    dy_ptr, len_ptr, dh_ptr, xz_ptr, hs_ptr, dg_ptr = bufs
    t, _, s_out, units, unit_mask, cols, col_mask, mask, live = tile_step(
        s, j, b0, T, B, H, len_ptr, REVERSE, True, HAS_LEN, True, BU, BN
    )
    offs = tile_offs(cols, H, units)
    h = load_tile(hs_ptr + slot_base(s_out, B, H) + offs, mask)
    dh = carried_dh(
        bufs, flags, target, s, t, units, unit_mask, cols, col_mask, mask, live, B, H, H, N_H, PERSISTENT, BU, NF, NPC
    )
    da = tl.where(live, rnn_act_grad(dh, h, OPT), 0.0)
    rows, row_mask = gate_rows(j, H, NG, NGS, BU)
    scatter_partials(
        xz_ptr + slot_base((s % 2) * tl.cdiv(H, BU) + j, B, H), cols * H, col_mask, da, res, w_ptr,
        rows * H, row_mask, H, KC, NKC, RESIDENT, PREC,
    )  # fmt: skip
    set_carry(bufs, cols, units, mask, B, H, tl.where(live, 0.0, dh))
    tl.store(dg_ptr + slot_base(t, B, H) + offs, da, mask=mask)


@triton.jit(do_not_specialize=["T"])
def rnn_fwd_kernel(
    gx_ptr, w_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, ACT: tl.constexpr, SAVE: tl.constexpr, RESIDENT: tl.constexpr,
    BU: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence RNN forward, tiled: one program per batch tile, every unit tile (common.forward_loop)."""
    forward_loop(
        rnn_fwd_tile, None, (gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr), w_ptr, w_ptr, flag_ptr, T, B, H, H, N_H, 1, 1,
        REVERSE, SAVE, HAS_LEN, False, False, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC, NF, PREC, ACT,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def rnn_fwd_persistent_kernel(
    gx_ptr, w_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, ACT: tl.constexpr, SAVE: tl.constexpr, RESIDENT: tl.constexpr,
    BU: tl.constexpr, BN: tl.constexpr, KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence RNN forward, persistent: N_H programs per batch group split the units and exchange h_t
    through xh (common.forward_loop)."""
    forward_loop(
        rnn_fwd_tile, None, (gx_ptr, len_ptr, hs_ptr, y_ptr, xh_ptr), w_ptr, w_ptr, flag_ptr, T, B, H, H, N_H, 1, 1,
        REVERSE, SAVE, HAS_LEN, False, True, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC, NF, PREC, ACT,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def rnn_bwd_kernel(
    dy_ptr, hs_ptr, w_ptr, len_ptr, dh_ptr, dg_ptr, xz_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, ACT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr,
    BN: tl.constexpr, KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence RNN backward, tiled (common.backward_loop)."""
    backward_loop(
        rnn_bwd_tile, None, (dy_ptr, len_ptr, dh_ptr, xz_ptr, hs_ptr, dg_ptr), w_ptr, w_ptr, flag_ptr,
        T, B, H, H, N_H, 1, 1, REVERSE, HAS_LEN, False, False, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC, NF, NPC,
        PREC, ACT,
    )  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def rnn_bwd_persistent_kernel(
    dy_ptr, hs_ptr, w_ptr, len_ptr, dh_ptr, dg_ptr, xz_ptr, flag_ptr, T, B, H, N_H,
    REVERSE: tl.constexpr, HAS_LEN: tl.constexpr, ACT: tl.constexpr, RESIDENT: tl.constexpr, BU: tl.constexpr,
    BN: tl.constexpr, KC: tl.constexpr, NKC: tl.constexpr, NF: tl.constexpr, NPC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Whole-sequence RNN backward, persistent: partials of da_t W_hh exchanged through xz
    (common.backward_loop)."""
    backward_loop(
        rnn_bwd_tile, None, (dy_ptr, len_ptr, dh_ptr, xz_ptr, hs_ptr, dg_ptr), w_ptr, w_ptr, flag_ptr,
        T, B, H, H, N_H, 1, 1, REVERSE, HAS_LEN, False, True, RESIDENT, BU, BU, BN, KC, NKC, KC, NKC, NF, NPC,
        PREC, ACT,
    )  # fmt: skip
