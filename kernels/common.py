"""Helpers shared by the cell kernels: activations, the tiled row-block matmul, batch-tile / time / state-slot
indexing, the hidden-state write (lengths masking) and the dh recurrence of the backward.

Glossary (as in the cell files):
    BB   rows of the batch tile a program owns (>= 16, padded and masked)
    BN   output columns of one tile (hidden units or projection units, >= 16)
    BK   reduction chunk of a tile matmul (>= 16)
    BKP  the whole reduction dimension of a resident weight block, padded to a power of two (>= 16)

Resident weights (the persistent kernels' RESIDENT variant): a program that owns one hidden tile loads its
slice of the recurrent weight once, before the time loop, as [BKP, BN] blocks (load_resident) and every step
multiplies the state rows by them (row_matmul) instead of streaming the slice from global memory (L2)
chunk by chunk (tile_matmul). Which variant runs is decided by fastrnn.ops.strategy (resident_fits).
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return tl.sigmoid(x)


@triton.jit
def tanh(x):
    # libdevice tanh fails in the interpreter and (1-e^-2x)/(1+e^-2x) overflows for x <= -50.
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def dot(a, b, DOT_FP32: tl.constexpr):
    """a [M, K] @ b [K, N] with an fp32 result.

    DOT_FP32: both operands in fp32, exact ("ieee") products; used for fp32 weights and, under the
    interpreter, for bf16 (whose interpreted tl.dot is broken). Otherwise ``a`` is rounded to b's dtype
    (fp16/bf16 tensor cores) and accumulated in fp32.
    """
    if DOT_FP32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a.to(b.dtype), b)
    return out


@triton.jit
def tile_matmul(
    acc,
    x_rows,
    row_mask,
    w_ptr,
    w_sk,
    w_sn,
    n_offs,
    n_mask,
    K,
    BK: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """acc [BB, BN] += x[rows, :K] @ w[:K, n_offs], reading both operands from global memory.

    ``x_rows`` [BB] points at the first element of each row of x (row-major, unit column stride);
    w's element (k, n) lives at ``w_ptr + k * w_sk + n * w_sn``, so a row-major W [N, K] used as W^T
    passes (w_sk, w_sn) = (1, K) and a row-major W [K, N] passes (N, 1).
    """
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_mask = ks < K
        x = tl.load(x_rows[:, None] + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)  # [BB, BK]
        w = tl.load(
            w_ptr + ks[:, None] * w_sk + n_offs[None, :] * w_sn,
            mask=k_mask[:, None] & n_mask[None, :],
            other=0.0,
        )  # [BK, BN]
        acc += dot(x, w, DOT_FP32)
    return acc


@triton.jit
def load_resident(w_ptr, w_sk, w_sn, n_offs, n_mask, K, BKP: tl.constexpr):
    """The [BKP, BN] block w[:K, n_offs] (zero past K and outside n_mask), strides as tile_matmul: a program's
    slice of a recurrent weight, loaded once before the time loop so that it stays on chip."""
    ks = tl.arange(0, BKP)
    return tl.load(
        w_ptr + ks[:, None] * w_sk + n_offs[None, :] * w_sn,
        mask=(ks < K)[:, None] & n_mask[None, :],
        other=0.0,
    )  # [BKP, BN]


@triton.jit
def row_matmul(
    acc,
    x_rows,
    row_mask,
    w_ptr,
    w_sk,
    w_sn,
    n_offs,
    n_mask,
    K,
    w_res,
    BK: tl.constexpr,
    BKP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """acc [BB, BN] += x[rows, :K] @ w[:K, n_offs]: with RESIDENT one dot of the state rows [BB, BKP] with the
    resident block ``w_res`` (load_resident of the same slice), else tile_matmul (``w_res`` unused)."""
    if RESIDENT:
        ks = tl.arange(0, BKP)
        x = tl.load(x_rows[:, None] + ks[None, :], mask=row_mask[:, None] & (ks < K)[None, :], other=0.0)
        acc += dot(x, w_res, DOT_FP32)  # [BB, BKP] @ [BKP, BN]
    else:
        acc = tile_matmul(acc, x_rows, row_mask, w_ptr, w_sk, w_sn, n_offs, n_mask, K, BK, DOT_FP32)
    return acc


@triton.jit
def batch_rows(pid, B, len_ptr, T, HAS_LEN: tl.constexpr, BB: tl.constexpr):
    """Rows of batch tile ``pid`` (int64), their mask, and each row's valid length (T without lengths)."""
    rows = pid.to(tl.int64) * BB + tl.arange(0, BB)
    row_mask = rows < B
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    else:
        lens = tl.zeros([BB], tl.int64) + T
    return rows, row_mask, lens


@triton.jit
def step_time(s, T, REVERSE: tl.constexpr):
    """Time index of the s-th step of a direction (s counts 0..T-1 in processing order)."""
    if REVERSE:
        t = T - 1 - s
    else:
        t = s
    return t


@triton.jit
def step_time_bwd(s, T, REVERSE: tl.constexpr):
    """Time index of the s-th step of a direction's backward pass (the forward order, reversed)."""
    if REVERSE:
        t = s
    else:
        t = T - 1 - s
    return t


@triton.jit
def state_slots(t, REVERSE: tl.constexpr, SAVE: tl.constexpr):
    """Slots of a [slots, B, N] state buffer that step t reads (before) and writes (after).

    SAVE: the buffer keeps every state, [T+1, B, N], the state before step t at t + REVERSE and after it at
    t + 1 - REVERSE (what the backward reads). Otherwise it is a [2, B, N] ping-pong buffer (inference).
    """
    s_in = t + REVERSE
    s_out = t + 1 - REVERSE
    if not SAVE:
        s_in = s_in % 2
        s_out = s_out % 2
    return s_in, s_out


@triton.jit
def emit_h(t, s_in, s_out, h_new, cols, col_mask, rows, row_mask, live, hs_ptr, y_ptr, B, P):
    """Write one [BB, BN] tile of a step's hidden state: hs[s_out] (frozen rows keep hs[s_in]) and y[t]
    (zero on frozen rows). hs is the fp32 state buffer (see state_slots), y is [T, B, P]."""
    mask = row_mask[:, None] & col_mask[None, :]
    live2 = live[:, None]
    h_in = hs_ptr + (s_in * B + rows)[:, None] * P + cols[None, :]
    h_out = hs_ptr + (s_out * B + rows)[:, None] * P + cols[None, :]
    h_prev = tl.load(h_in, mask=mask, other=0.0)  # [BB, BN]
    tl.store(h_out, tl.where(live2, h_new, h_prev), mask=mask)
    y_out = y_ptr + (t * B + rows)[:, None] * P + cols[None, :]
    tl.store(y_out, tl.where(live2, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_dh(t, cols, col_mask, rows, row_mask, live, dy_ptr, dh_ptr, B, P):
    """Total gradient of a step's output tile [BB, BN]: the carried dh [B, P] plus dy[t] on live rows."""
    mask = row_mask[:, None] & col_mask[None, :]
    dh = tl.load(dh_ptr + rows[:, None] * P + cols[None, :], mask=mask, other=0.0)
    dy = tl.load(dy_ptr + (t * B + rows)[:, None] * P + cols[None, :], mask=mask & live[:, None], other=0.0).to(
        tl.float32
    )
    return dh + dy


@triton.jit
def dh_recur_step(
    t,
    p0,
    rows,
    row_mask,
    dg_ptr,
    w_ptr,
    dh_ptr,
    B,
    G,
    P,
    w0,
    w1,
    w2,
    w3,
    NG: tl.constexpr,
    BP: tl.constexpr,
    BK: tl.constexpr,
    BHP: tl.constexpr,
    RESIDENT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """dh[:, p-tile] += dG_t @ W_hh[:, p-tile]: the recurrent part of dh_{t-1}, for one [BB, BP] tile.

    dg is the [T, B, G] fp32 gate-gradient buffer (zero on frozen rows), W_hh is [G, P] row-major. RESIDENT:
    w0 .. w{NG-1} are the program's resident blocks W_hh[g H : (g+1) H, p-tile] of the NG gates (H = G / NG),
    each [BHP, BP] (load_resident); otherwise they are unused and the slice streams through tile_matmul.
    """
    cols = p0 + tl.arange(0, BP)
    col_mask = cols < P
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows[:, None] * P + cols[None, :]
    acc = tl.load(dh_ptr + offs, mask=mask, other=0.0)  # [BB, BP]
    dg_rows = dg_ptr + (t * B + rows) * G  # [BB]
    if RESIDENT:
        H = G // NG
        acc = row_matmul(acc, dg_rows, row_mask, w_ptr, P, 1, cols, col_mask, H, w0, BK, BHP, True, DOT_FP32)
        if NG > 1:
            acc = row_matmul(acc, dg_rows + H, row_mask, w_ptr, P, 1, cols, col_mask, H, w1, BK, BHP, True, DOT_FP32)
        if NG > 2:
            acc = row_matmul(
                acc, dg_rows + 2 * H, row_mask, w_ptr, P, 1, cols, col_mask, H, w2, BK, BHP, True, DOT_FP32
            )
        if NG > 3:
            acc = row_matmul(
                acc, dg_rows + 3 * H, row_mask, w_ptr, P, 1, cols, col_mask, H, w3, BK, BHP, True, DOT_FP32
            )
    else:
        acc = tile_matmul(acc, dg_rows, row_mask, w_ptr, P, 1, cols, col_mask, G, BK, DOT_FP32)
    tl.store(dh_ptr + offs, acc, mask=mask)


@triton.jit
def resident_gate_blocks(w_ptr, H, P, n_offs, n_mask, K, w_sk, w_sn, NG: tl.constexpr, BKP: tl.constexpr):
    """The resident blocks of W_hh [NG H, P] for the NG gates (0 for the gates past NG), gate g's block being
    load_resident(w_ptr + g H P, w_sk, w_sn, n_offs, n_mask, K): (1, P) and K = P for the forward's slice
    W_hh[g H + units, :]^T, (P, 1) and K = H for the backward's W_hh[g H : (g+1) H, p-tile]."""
    w0 = load_resident(w_ptr, w_sk, w_sn, n_offs, n_mask, K, BKP)
    w1 = 0
    w2 = 0
    w3 = 0
    if NG > 1:
        w1 = load_resident(w_ptr + H * P, w_sk, w_sn, n_offs, n_mask, K, BKP)
    if NG > 2:
        w2 = load_resident(w_ptr + 2 * H * P, w_sk, w_sn, n_offs, n_mask, K, BKP)
    if NG > 3:
        w3 = load_resident(w_ptr + 3 * H * P, w_sk, w_sn, n_offs, n_mask, K, BKP)
    return w0, w1, w2, w3


@triton.jit
def grid_sync(bar_ptr, n_programs, k):
    """Grid-wide barrier number ``k`` (1, 2, ...) among the ``n_programs`` programs sharing the int32 counter
    at ``bar_ptr`` (zero at launch).

    Monotonic counter: every program adds 1 per barrier and waits until the counter reaches k * n_programs,
    so no reset (and no second counter) is needed; the counter stays below 2**31 for T * phases * n_programs
    < 2**31. Ordering: the block barrier makes all of this program's stores precede its acq_rel arrival
    (cumulativity, as in CUDA's grid.sync); the acquire polls plus the closing block barrier make every store
    of the other programs before their arrival visible to all of this program's threads afterwards. Every
    program must be resident at once (cooperative launch), else this spins forever; the interpreter runs
    programs one after another, so it can only run grids of one program through here.
    """
    tl.debug_barrier()
    tl.atomic_add(bar_ptr, 1, sem="acq_rel", scope="gpu")
    target = k * n_programs
    while tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit
def persistent_ids(N_H):
    """(hidden-slice index, batch-group index, number of batch groups) of this program in a persistent grid
    of N_H hidden slices times some batch groups."""
    pid = tl.program_id(0)
    return pid % N_H, pid // N_H, tl.num_programs(0) // N_H
