"""What every cell's kernels share: activations, the tensor-core matmul of a weight slice, tile indexing, the
per-program flags that replace a grid barrier, and the two whole-sequence loops (forward, backward) that run
a cell's tile steps, tiled or persistent.

Glossary (as in the cell files):
    T time, B batch, H hidden, P = proj_size or H (size of h), NG gates per cell (4 LSTM, 3 GRU, 1 RNN)
    BU    hidden units per tile; a tile owns every gate of its units, so its weight slice is NGS * BU rows
    NGS   gate slots of a slice: NG padded to a power of two (the padding rows are masked to zero)
    BQ    projection units per tile (LSTM with proj_size; BU otherwise)
    BN    batch columns per tile (>= 16): the batch is the N dimension of every matmul
    KC    reduction chunk of a weight slice (a power of two >= 16);  NKC chunks (1..4) cover K
    NF    the number of flags a program polls, padded to a power of two

Layout of the matmuls: the weight slice is always the M side, [rows, K] against a state transposed to [K, BN],
so that a 64-row slice meets Hopper's wgmma (M = 64 per warpgroup) whatever the batch, and the state tile the
dot produces is [units, batch]. A resident slice is loaded once, before the time loop, as NKC chunks [rows, KC]
(Triton keeps such loop-invariant dot operands in shared memory); K needs no padding to a power of two beyond
the last chunk's (768 = 3 x 256). A streamed slice is re-read from global memory (L2) chunk by chunk every
step.

Precision (PREC): 0 fp16/bf16 operands on tensor cores (the state is rounded to the weight's dtype), 1 fp32
operands on TF32 tensor cores, 2 fp32 operands with exact products (also used for bf16 under the interpreter,
whose bf16 tl.dot is broken). Accumulation is fp32 always.

Synchronisation: the programs of one batch group each own a flag (int32, zero at launch). After writing a
phase's results a program raises its flag to a running phase count (publish); a program that needs other
programs' results waits until every flag of its group has reached that count (wait_for). Release/acquire
order the data: the block barrier before the release makes all of the program's stores precede it, and the
acquire polls plus the closing block barrier make every store before the others' releases visible to all of
this program's threads. Exchanged data is read with ``.cg`` loads (past L1). Each exchange buffer has two
slots (by step parity): a program writes slot s % 2 of step s only after all programs finished step s - 1,
hence reading slot (s - 2) % 2. The tiled loops run one program per batch tile that owns every hidden tile, so
publish is a block barrier and nothing is waited for.
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
def mma(acc, a, b, PREC: tl.constexpr):
    """acc + a @ b in fp32, a the weight side (its dtype is the matmul dtype), b the state side (see PREC in the
    module docstring)."""
    if PREC == 0:
        out = tl.dot(a, b.to(a.dtype), acc)
    elif PREC == 1:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32")
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return out


# --- tiles ------------------------------------------------------------------------------------------------


@triton.jit
def tile_ids(j, b0, H, B, BU: tl.constexpr, BN: tl.constexpr):
    """Units [BU] of unit tile j and batch columns [BN] from b0, with their masks."""
    units = j * BU + tl.arange(0, BU)
    cols = b0 + tl.arange(0, BN)
    return units, units < H, cols, cols < B


@triton.jit
def gate_rows(j, H, NG: tl.constexpr, NGS: tl.constexpr, BU: tl.constexpr):
    """The weight row of each of the NGS * BU rows of unit tile j's slice (row r: gate r // BU, unit
    j * BU + r % BU) and their mask (padding gate slots and units past H are masked)."""
    r = tl.arange(0, NGS * BU)
    gate = r // BU
    unit = j * BU + r % BU
    return (gate * H + unit).to(tl.int64), (gate < NG) & (unit < H)


@triton.jit
def slot_base(slot, B, N):
    """Offset of ``slot``'s [B, N] block in a row-major [slots, B, N] buffer: int64 (it passes 2**31 for long
    sequences), computed once per step as a scalar so that the tile offsets within the block stay int32."""
    return (slot * B).to(tl.int64) * N


@triton.jit
def tile_offs(cols, N, units):
    """[BU, BN] element offsets of (units, batch columns) within a row-major [B, N] block."""
    return cols[None, :] * N + units[:, None]


@triton.jit
def load_tile(ptrs, mask):
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def batch_live(t, cols, col_mask, len_ptr, HAS_LEN: tl.constexpr):
    """[1, BN]: which batch columns are still inside their sequence at time t."""
    if HAS_LEN:
        lens = tl.load(len_ptr + cols, mask=col_mask, other=0)
        live = t < lens
    else:
        live = col_mask | True
    return live[None, :]


@triton.jit
def split_gates(acc, NGS: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr):
    """The NGS gate blocks [BU, BN] of a slice's [NGS * BU, BN] result (rows slot * BU + unit); 0 for the
    slots past NGS."""
    if NGS == 1:
        g0, g1, g2, g3 = acc, 0, 0, 0
    else:
        x = tl.permute(tl.reshape(acc, [2, 2, BU, BN]), [2, 3, 0, 1])  # [BU, BN, slot // 2, slot % 2]
        even, odd = tl.split(x)
        g0, g2 = tl.split(even)
        g1, g3 = tl.split(odd)
    return g0, g1, g2, g3


@triton.jit
def join_gates(g0, g1, g2, g3, NGS: tl.constexpr, BU: tl.constexpr, BN: tl.constexpr):
    """Inverse of split_gates: [NGS * BU, BN] from the gate blocks."""
    if NGS == 1:
        out = g0
    else:
        x = tl.join(tl.join(g0, g2), tl.join(g1, g3))  # [BU, BN, slot // 2, slot % 2]
        out = tl.reshape(tl.permute(x, [2, 3, 0, 1]), [4 * BU, BN])
    return out


# --- weight slices and their matmuls ------------------------------------------------------------------------


@triton.jit
def weight_chunk(ptr, r_offs, r_mask, k_stride, k0, K, KC: tl.constexpr, TRANS: tl.constexpr):
    """Chunk k0 .. k0 + KC of a weight slice whose element (r, k) is at ptr + r_offs[r] + k * k_stride (zero
    past K and on masked rows): [R, KC], or its transpose [KC, R] with TRANS."""
    ks = k0 + tl.arange(0, KC)
    k_offs = ks.to(tl.int64) * k_stride
    if TRANS:
        w = tl.load(ptr + k_offs[:, None] + r_offs[None, :], mask=(ks < K)[:, None] & r_mask[None, :], other=0.0)
    else:
        w = tl.load(ptr + r_offs[:, None] + k_offs[None, :], mask=r_mask[:, None] & (ks < K)[None, :], other=0.0)
    return w


@triton.jit
def resident_chunks(ptr, r_offs, r_mask, k_stride, K, KC: tl.constexpr, NKC: tl.constexpr, TRANS: tl.constexpr):
    """The NKC chunks of a weight slice (weight_chunk), loaded once before a time loop; 0 past NKC."""
    c0 = weight_chunk(ptr, r_offs, r_mask, k_stride, 0, K, KC, TRANS)
    c1 = 0
    c2 = 0
    c3 = 0
    if NKC > 1:
        c1 = weight_chunk(ptr, r_offs, r_mask, k_stride, KC, K, KC, TRANS)
    if NKC > 2:
        c2 = weight_chunk(ptr, r_offs, r_mask, k_stride, 2 * KC, K, KC, TRANS)
    if NKC > 3:
        c3 = weight_chunk(ptr, r_offs, r_mask, k_stride, 3 * KC, K, KC, TRANS)
    return c0, c1, c2, c3


@triton.jit
def load_state_t(ptr, k0, K, KC: tl.constexpr, n_offs, n_mask):
    """[KC, BN] chunk of an exchanged state read transposed: element (k, n) at ptr + n_offs[n] + k (read past L1:
    other programs wrote it during this launch)."""
    ks = k0 + tl.arange(0, KC)
    return tl.load(
        ptr + ks[:, None] + n_offs[None, :], mask=(ks < K)[:, None] & n_mask[None, :], other=0.0, cache_modifier=".cg"
    )


@triton.jit
def slice_matmul(
    acc,
    res,
    w_ptr,
    r_offs,
    r_mask,
    k_stride,
    x_ptr,
    n_offs,
    n_mask,
    K,
    KC: tl.constexpr,
    NKC: tl.constexpr,
    RESIDENT: tl.constexpr,
    PREC: tl.constexpr,
):
    """acc [R, BN] += W[rows, :K] @ X^T[:K, cols]: the slice from its resident chunks ``res`` or streamed chunk by
    chunk (weight_chunk layout), X^T from an exchange buffer (load_state_t)."""
    BN: tl.constexpr = n_mask.shape[0]
    # Small enough state chunks are all loaded before the first dot (one memory round trip, not NKC); larger
    # ones would hold too many registers while the dots run.
    PRELOAD: tl.constexpr = NKC * KC * BN * x_ptr.dtype.element_ty.primitive_bitwidth <= 8 * 32768
    if RESIDENT and PRELOAD:
        x0 = load_state_t(x_ptr, 0, K, KC, n_offs, n_mask)
        x1 = x0
        x2 = x0
        x3 = x0
        if NKC > 1:
            x1 = load_state_t(x_ptr, KC, K, KC, n_offs, n_mask)
        if NKC > 2:
            x2 = load_state_t(x_ptr, 2 * KC, K, KC, n_offs, n_mask)
        if NKC > 3:
            x3 = load_state_t(x_ptr, 3 * KC, K, KC, n_offs, n_mask)
        acc = mma(acc, res[0], x0, PREC)
        if NKC > 1:
            acc = mma(acc, res[1], x1, PREC)
        if NKC > 2:
            acc = mma(acc, res[2], x2, PREC)
        if NKC > 3:
            acc = mma(acc, res[3], x3, PREC)
    elif RESIDENT:
        acc = mma(acc, res[0], load_state_t(x_ptr, 0, K, KC, n_offs, n_mask), PREC)
        if NKC > 1:
            acc = mma(acc, res[1], load_state_t(x_ptr, KC, K, KC, n_offs, n_mask), PREC)
        if NKC > 2:
            acc = mma(acc, res[2], load_state_t(x_ptr, 2 * KC, K, KC, n_offs, n_mask), PREC)
        if NKC > 3:
            acc = mma(acc, res[3], load_state_t(x_ptr, 3 * KC, K, KC, n_offs, n_mask), PREC)
    else:
        for k0 in range(0, K, KC):
            w = weight_chunk(w_ptr, r_offs, r_mask, k_stride, k0, K, KC, False)
            acc = mma(acc, w, load_state_t(x_ptr, k0, K, KC, n_offs, n_mask), PREC)
    return acc


@triton.jit
def _store_partial(z_ptr, p0, P, KC: tl.constexpr, n_offs, n_mask, z):
    """Store the [KC, BN] rows p0 .. p0 + KC of a partial (scatter_partials)."""
    ps = p0 + tl.arange(0, KC)
    tl.store(z_ptr + ps[:, None] + n_offs[None, :], z, mask=(ps < P)[:, None] & n_mask[None, :])


@triton.jit
def scatter_partials(
    z_ptr,
    n_offs,
    n_mask,
    g,
    res,
    w_ptr,
    r_offs,
    r_mask,
    P,
    KC: tl.constexpr,
    NKC: tl.constexpr,
    RESIDENT: tl.constexpr,
    PREC: tl.constexpr,
):
    """z[:P, cols] = W[rows, :P]^T @ g: a tile's contribution [P, BN] to dh_{t-1} = dG_t W_hh from its slice rows
    (g [R, BN] the tile's fp32 gate gradients), stored at z_ptr + n_offs[n] + p. The slice comes transposed,
    [KC, R] chunks over P (resident ``res`` or streamed)."""
    BN: tl.constexpr = g.shape[1]
    if RESIDENT:
        _store_partial(z_ptr, 0, P, KC, n_offs, n_mask, mma(tl.zeros([KC, BN], tl.float32), res[0], g, PREC))
        if NKC > 1:
            _store_partial(z_ptr, KC, P, KC, n_offs, n_mask, mma(tl.zeros([KC, BN], tl.float32), res[1], g, PREC))
        if NKC > 2:
            _store_partial(
                z_ptr, 2 * KC, P, KC, n_offs, n_mask, mma(tl.zeros([KC, BN], tl.float32), res[2], g, PREC)
            )
        if NKC > 3:
            _store_partial(
                z_ptr, 3 * KC, P, KC, n_offs, n_mask, mma(tl.zeros([KC, BN], tl.float32), res[3], g, PREC)
            )
    else:
        for p0 in range(0, P, KC):
            v = weight_chunk(w_ptr, r_offs, r_mask, 1, p0, P, KC, True)
            _store_partial(z_ptr, p0, P, KC, n_offs, n_mask, mma(tl.zeros([KC, BN], tl.float32), v, g, PREC))


@triton.jit
def gather_partials(acc, z_ptr, slot, n_tiles, cols, col_mask, units, unit_mask, B, P, NPC: tl.constexpr):
    """acc [BQ, BN] + the sum over the n_tiles producer tiles of their partials z[slot, i, cols, units] (the
    [2, n_tiles, B, P] fp32 buffer of scatter_partials), NPC producers' loads in flight at a time (summed in
    registers: each thread adds up its own elements, no cross-thread reduction)."""
    mask = unit_mask[:, None] & col_mask[None, :]
    ptrs = z_ptr + slot_base(slot * n_tiles, B, P) + tile_offs(cols, P, units)  # [BQ, BN]
    stride = B * P
    for i0 in range(0, n_tiles, NPC):
        for i in tl.static_range(NPC):
            valid = mask & (tl.zeros_like(units)[:, None] + (i0 + i) < n_tiles)
            acc += tl.load(ptrs + (i0 + i) * stride, mask=valid, other=0.0, cache_modifier=".cg")
    return acc


# --- flags ----------------------------------------------------------------------------------------------------


@triton.jit
def wait_for(flags, n, target, NF: tl.constexpr):
    """Spin until the n flags at ``flags`` all reach ``target`` (acquire), then a block barrier (see the module
    docstring)."""
    offs = tl.arange(0, NF)
    mask = offs < n
    seen = tl.min(tl.where(mask, tl.atomic_add(flags + offs, 0, mask=mask, sem="acquire", scope="gpu"), target))
    while seen < target:
        seen = tl.min(tl.where(mask, tl.atomic_add(flags + offs, 0, mask=mask, sem="acquire", scope="gpu"), target))
    tl.debug_barrier()


@triton.jit
def publish(flag, value, PERSISTENT: tl.constexpr):
    """End of a phase: a block barrier, then (persistent) raise this program's flag to ``value`` (release)."""
    tl.debug_barrier()
    if PERSISTENT:
        tl.atomic_xchg(flag, value, sem="release", scope="gpu")


# --- time -----------------------------------------------------------------------------------------------------


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
    """Slots of a [slots, B, N] fp32 state buffer that step t reads (before) and writes (after).

    SAVE: the buffer keeps every state, [T+1, B, N], the state before step t at t + REVERSE and after it at
    t + 1 - REVERSE (what the backward reads). Otherwise it is a [2, B, N] ping-pong buffer (inference).
    """
    s_in = t + REVERSE
    s_out = t + 1 - REVERSE
    if not SAVE:
        s_in = s_in % 2
        s_out = s_out % 2
    return s_in, s_out


# --- the whole-sequence loops ----------------------------------------------------------------------------------


@triton.jit
def program_ids(N_H, PERSISTENT: tl.constexpr):
    """(hidden slice, batch group, number of batch groups) of this program: a persistent grid is N_H hidden
    slices times the groups; a tiled grid is one program per batch tile, owning every hidden tile."""
    pid = tl.program_id(0)
    if PERSISTENT:
        ids = pid % N_H, pid // N_H, tl.num_programs(0) // N_H
    else:
        ids = 0, pid, tl.num_programs(0)
    return ids


@triton.jit
def forward_loop(
    TILE: tl.constexpr,
    PROJ_TILE: tl.constexpr,
    bufs,
    w_ptr,
    w_hr_ptr,
    flag_ptr,
    T,
    B,
    H,
    P,
    N_H,
    NG: tl.constexpr,
    NGS: tl.constexpr,
    REVERSE: tl.constexpr,
    SAVE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    PERSISTENT: tl.constexpr,
    RESIDENT: tl.constexpr,
    BU: tl.constexpr,
    BQ: tl.constexpr,
    BN: tl.constexpr,
    KC: tl.constexpr,
    NKC: tl.constexpr,
    KCH: tl.constexpr,
    NKCH: tl.constexpr,
    NF: tl.constexpr,
    PREC: tl.constexpr,
    OPT: tl.constexpr,
):
    """Whole-sequence forward: step by step, every (batch tile, unit tile) this program owns runs the cell's TILE
    (gates from h_{t-1}; with proj_size m_t), then, with proj_size, every (batch tile, projection tile) runs
    PROJ_TILE (h_t = m_t W_hr^T). Program (slice, group) owns unit and projection tiles slice, slice + N_H, ...
    of batch tiles group, group + groups, ... A phase waits (inside the tile, after its prefetch) for the
    previous phase of every program of its group and publishes its own. RESIDENT (one unit and one projection
    tile per program): the slices of W_hh (KC, NKC over P) and W_hr (KCH, NKCH over H) are loaded before the
    loop."""
    pid_h, group, n_groups = program_ids(N_H, PERSISTENT)
    flags = flag_ptr + group * N_H
    PHASES: tl.constexpr = 2 if HAS_PROJ else 1
    res, res_r = resident_slices(
        w_ptr, w_hr_ptr, pid_h, H, P, NG, NGS, False, HAS_PROJ, RESIDENT, BU, BQ, KC, NKC, KCH, NKCH
    )
    for s in range(0, T):
        for b0 in range(group * BN, B, n_groups * BN):
            for j in range(pid_h, tl.cdiv(H, BU), N_H):
                TILE(
                    bufs, res, w_ptr, flags, s * PHASES, s, j, b0, T, B, H, P, N_H,
                    NG, NGS, REVERSE, SAVE, HAS_LEN, HAS_PROJ, PERSISTENT, RESIDENT, BU, BN, KC, NKC, NF, PREC, OPT,
                )  # fmt: skip
        publish(flags + pid_h, s * PHASES + 1, PERSISTENT)
        if HAS_PROJ:
            for b0 in range(group * BN, B, n_groups * BN):
                for q0 in range(pid_h * BQ, P, N_H * BQ):
                    PROJ_TILE(
                        bufs, res_r, w_hr_ptr, flags, s * PHASES + 1, s, q0, b0, T, B, H, P, N_H,
                        REVERSE, SAVE, HAS_LEN, PERSISTENT, RESIDENT, BQ, BN, KCH, NKCH, NF, PREC,
                    )  # fmt: skip
            publish(flags + pid_h, s * PHASES + 2, PERSISTENT)


@triton.jit
def backward_loop(
    TILE: tl.constexpr,
    PROJ_TILE: tl.constexpr,
    bufs,
    w_ptr,
    w_hr_ptr,
    flag_ptr,
    T,
    B,
    H,
    P,
    N_H,
    NG: tl.constexpr,
    NGS: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    PERSISTENT: tl.constexpr,
    RESIDENT: tl.constexpr,
    BU: tl.constexpr,
    BQ: tl.constexpr,
    BN: tl.constexpr,
    KC: tl.constexpr,
    NKC: tl.constexpr,
    KCH: tl.constexpr,
    NKCH: tl.constexpr,
    NF: tl.constexpr,
    NPC: tl.constexpr,
    PREC: tl.constexpr,
    OPT: tl.constexpr,
):
    """Whole-sequence backward, tiles owned as in forward_loop, steps in reverse order. Per step, with
    proj_size, every projection tile first forms dL/dh_t for its units from the partials of the step before
    (PROJ_TILE); then every unit tile (TILE) forms dh_t (without proj_size, from the partials itself), its gate
    gradients, and its partial [P, BN] of dh_{t-1} = dG_t W_hh. After the last step final_dh_tile sums the last
    partials into dh0 for every projection (or unit) tile. RESIDENT: the transposed W_hh slice (KC, NKC over P)
    and the W_hr columns of the unit tile (KCH, NKCH over P) are loaded before the loop. ``bufs`` starts with
    (dy, lengths, dh, partials) for every cell."""
    pid_h, group, n_groups = program_ids(N_H, PERSISTENT)
    flags = flag_ptr + group * N_H
    PHASES: tl.constexpr = 2 if HAS_PROJ else 1
    res, res_r = resident_slices(
        w_ptr, w_hr_ptr, pid_h, H, P, NG, NGS, True, HAS_PROJ, RESIDENT, BU, BQ, KC, NKC, KCH, NKCH
    )
    for s in range(0, T):
        if HAS_PROJ:
            for b0 in range(group * BN, B, n_groups * BN):
                for q0 in range(pid_h * BQ, P, N_H * BQ):
                    PROJ_TILE(
                        bufs, flags, s * PHASES, s, q0, b0, T, B, H, P, N_H,
                        REVERSE, HAS_LEN, PERSISTENT, BU, BQ, BN, NF, NPC,
                    )  # fmt: skip
            publish(flags + pid_h, s * PHASES + 1, PERSISTENT)
        for b0 in range(group * BN, B, n_groups * BN):
            for j in range(pid_h, tl.cdiv(H, BU), N_H):
                TILE(
                    bufs, res, res_r, w_ptr, w_hr_ptr, flags, s * PHASES + PHASES - 1, s, j, b0, T, B, H, P, N_H,
                    NG, NGS, REVERSE, HAS_LEN, HAS_PROJ, PERSISTENT, RESIDENT, BU, BN, KC, NKC, KCH, NKCH, NF, NPC,
                    PREC, OPT,
                )  # fmt: skip
        publish(flags + pid_h, s * PHASES + PHASES, PERSISTENT)
    for b0 in range(group * BN, B, n_groups * BN):
        for q0 in range(pid_h * BQ, P, N_H * BQ):
            final_dh_tile(bufs, flags, T * PHASES, T, q0, b0, B, H, P, N_H, PERSISTENT, BU, BQ, BN, NF, NPC)


@triton.jit
def resident_slices(
    w_ptr,
    w_hr_ptr,
    pid_h,
    H,
    P,
    NG: tl.constexpr,
    NGS: tl.constexpr,
    BACKWARD: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    RESIDENT: tl.constexpr,
    BU: tl.constexpr,
    BQ: tl.constexpr,
    KC: tl.constexpr,
    NKC: tl.constexpr,
    KCH: tl.constexpr,
    NKCH: tl.constexpr,
):
    """The resident weight slices of program ``pid_h`` (RESIDENT; zeros otherwise): its W_hh gate rows, as
    [NGS * BU, KC] chunks over P (the backward: transposed, [KC, NGS * BU]), and with proj_size its W_hr slice:
    forward the rows of its projection tile, [BQ, KCH] chunks over H; backward the columns of its unit tile,
    [BU, KCH] chunks over P."""
    res = 0, 0, 0, 0
    res_r = 0, 0, 0, 0
    if RESIDENT:
        rows, row_mask = gate_rows(pid_h, H, NG, NGS, BU)
        res = resident_chunks(w_ptr, rows * P, row_mask, 1, P, KC, NKC, BACKWARD)
        if HAS_PROJ and BACKWARD:
            units = pid_h * BU + tl.arange(0, BU)
            res_r = resident_chunks(w_hr_ptr, units.to(tl.int64), units < H, H, P, KCH, NKCH, False)
        elif HAS_PROJ:
            q = pid_h * BQ + tl.arange(0, BQ)
            res_r = resident_chunks(w_hr_ptr, q.to(tl.int64) * H, q < P, 1, H, KCH, NKCH, False)
    return res, res_r


@triton.jit
def tile_step(
    s,
    j,
    b0,
    T,
    B,
    N,
    len_ptr,
    REVERSE: tl.constexpr,
    SAVE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    BACKWARD: tl.constexpr,
    BU: tl.constexpr,
    BN: tl.constexpr,
):
    """Where a tile step works: time t of step s (backward steps in reverse), the state slots it reads and
    writes, tile j's units (of N) and batch columns from b0 with their masks, the [BU, BN] mask and which
    columns are live at t ([1, BN])."""
    if BACKWARD:
        t = step_time_bwd(s, T, REVERSE)
    else:
        t = step_time(s, T, REVERSE)
    s_in, s_out = state_slots(t, REVERSE, SAVE)
    units, unit_mask, cols, col_mask = tile_ids(j, b0, N, B, BU, BN)
    mask = unit_mask[:, None] & col_mask[None, :]
    return t, s_in, s_out, units, unit_mask, cols, col_mask, mask, batch_live(t, cols, col_mask, len_ptr, HAS_LEN)


@triton.jit
def recurrent_gates(
    res,
    w_ptr,
    xh_ptr,
    flags,
    target,
    s,
    j,
    cols,
    col_mask,
    B,
    H,
    P,
    N_H,
    NG: tl.constexpr,
    NGS: tl.constexpr,
    PERSISTENT: tl.constexpr,
    RESIDENT: tl.constexpr,
    BU: tl.constexpr,
    BN: tl.constexpr,
    KC: tl.constexpr,
    NKC: tl.constexpr,
    NF: tl.constexpr,
    PREC: tl.constexpr,
):
    """The NGS gate blocks [BU, BN] of h_{t-1} W_hh^T for unit tile j (split_gates), h_{t-1} read from slot
    (s + 1) % 2 of the exchange buffer xh [2, B, P] once every program of the group has written it (waits for
    ``target`` when PERSISTENT; call it after the tile's own loads, which then overlap the wait)."""
    if PERSISTENT:
        wait_for(flags, N_H, target, NF)
    rows, row_mask = gate_rows(j, H, NG, NGS, BU)
    acc = tl.zeros([NGS * BU, BN], tl.float32)
    acc = slice_matmul(
        acc, res, w_ptr, rows * P, row_mask, 1, xh_ptr + slot_base((s + 1) % 2, B, P), cols * P, col_mask, P,
        KC, NKC, RESIDENT, PREC,
    )  # fmt: skip
    return split_gates(acc, NGS, BU, BN)


@triton.jit
def carried_dh(
    bufs,
    flags,
    target,
    s,
    t,
    units,
    unit_mask,
    cols,
    col_mask,
    mask,
    live,
    B,
    H,
    P,
    N_H,
    PERSISTENT: tl.constexpr,
    BU: tl.constexpr,
    NF: tl.constexpr,
    NPC: tl.constexpr,
):
    """dL/dh_t [BQ, BN] of P-units ``units``: dh_local, then (PERSISTENT) the wait for ``target``, then every
    unit tile's partial of the step before (dh_total). Call it after the tile's own loads."""
    dh = dh_local(bufs, t, cols, units, mask, live, B, P)
    if PERSISTENT:
        wait_for(flags, N_H, target, NF)
    return dh_total(dh, bufs, s, cols, col_mask, units, unit_mask, B, H, P, BU, NPC)


@triton.jit
def emit_h(h_new, h_prev, live, t, s_out, x_slot, cols, units, mask, hs_ptr, y_ptr, xh_ptr, B, P):
    """Write a step's [BQ, BN] hidden-state tile: the exchange buffer xh[x_slot] first (the next step waits for
    it), then the fp32 state hs[s_out] and the output y[t]. Frozen columns keep h_prev and output zero."""
    h = tl.where(live, h_new, h_prev)
    offs = tile_offs(cols, P, units)
    tl.store(xh_ptr + slot_base(x_slot, B, P) + offs, h.to(xh_ptr.dtype.element_ty), mask=mask)
    tl.store(hs_ptr + slot_base(s_out, B, P) + offs, h, mask=mask)
    tl.store(y_ptr + slot_base(t, B, P) + offs, tl.where(live, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def dh_local(bufs, t, cols, units, mask, live, B, P):
    """The part of dL/dh_t [BQ, BN] (P-units ``units``) that needs no other program: the frozen-column carry in
    dh [B, P] plus dy_t on live columns (loaded before the wait for the partials)."""
    dy_ptr, dh_ptr = bufs[0], bufs[2]
    offs = tile_offs(cols, P, units)
    return load_tile(dh_ptr + offs, mask) + tl.where(live, load_tile(dy_ptr + slot_base(t, B, P) + offs, mask), 0.0)


@triton.jit
def dh_total(dh, bufs, s, cols, col_mask, units, unit_mask, B, H, P, BU: tl.constexpr, NPC: tl.constexpr):
    """dL/dh_t: dh_local plus every unit tile's partial of the step before (slot (s + 1) % 2 of the partials
    buffer)."""
    return gather_partials(dh, bufs[3], (s + 1) % 2, tl.cdiv(H, BU), cols, col_mask, units, unit_mask, B, P, NPC)


@triton.jit
def set_carry(bufs, cols, units, mask, B, P, carry):
    """Leave ``carry`` [BQ, BN] in dh [B, P]: what flows into dh_{t-1} without the partials (dh_t on frozen
    columns; GRU's direct path on live ones)."""
    tl.store(bufs[2] + tile_offs(cols, P, units), carry, mask=mask)


@triton.jit
def final_dh_tile(
    bufs,
    flags,
    target,
    T,
    q0,
    b0,
    B,
    H,
    P,
    N_H,
    PERSISTENT: tl.constexpr,
    BU: tl.constexpr,
    BQ: tl.constexpr,
    BN: tl.constexpr,
    NF: tl.constexpr,
    NPC: tl.constexpr,
):
    """dh0 for P-units q0 .. q0 + BQ: the frozen-column carry plus the partials of the last step, into dh."""
    dh_ptr, z_ptr = bufs[2], bufs[3]
    units = q0 + tl.arange(0, BQ)
    unit_mask = units < P
    cols = b0 + tl.arange(0, BN)
    col_mask = cols < B
    mask = unit_mask[:, None] & col_mask[None, :]
    dh_offs = tile_offs(cols, P, units)
    dh = load_tile(dh_ptr + dh_offs, mask)
    if PERSISTENT:
        wait_for(flags, N_H, target, NF)
    dh = gather_partials(dh, z_ptr, (T + 1) % 2, tl.cdiv(H, BU), cols, col_mask, units, unit_mask, B, P, NPC)
    tl.store(dh_ptr + dh_offs, dh, mask=mask)


# --- weight gradients --------------------------------------------------------------------------------------------


@triton.jit
def weight_grad_kernel(
    g_ptr,
    x_ptr,
    out_ptr,
    N,
    M,
    K,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BR: tl.constexpr,
    PREC: tl.constexpr,
    MM_DTYPE: tl.constexpr,
):
    """out [M, K] fp32 = g^T @ x over all N = T * B rows: a weight's gradient from the fp32 gate gradients g
    [N, M] and the fp32 states x [N, K] its matmul read, on tensor cores in the recurrence's matmul dtype
    (PREC 0: both operands rounded to MM_DTYPE; 1 TF32; 2 exact fp32), accumulated in fp32. One program per
    [BM, BK] output tile, reducing over N in chunks of BR."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    ms = pid_m * BM + tl.arange(0, BM)
    ks = pid_k * BK + tl.arange(0, BK)
    acc = tl.zeros([BM, BK], tl.float32)
    for r0 in range(0, N, BR):
        rs = r0 + tl.arange(0, BR).to(tl.int64)
        r_mask = rs < N
        g = tl.load(g_ptr + rs[None, :] * M + ms[:, None], mask=(ms < M)[:, None] & r_mask[None, :], other=0.0)
        x = tl.load(x_ptr + rs[:, None] * K + ks[None, :], mask=r_mask[:, None] & (ks < K)[None, :], other=0.0)
        acc = mma(acc, g.to(MM_DTYPE), x, PREC)  # [BM, BR] @ [BR, BK]
    tl.store(out_ptr + ms[:, None].to(tl.int64) * K + ks[None, :], acc, mask=(ms < M)[:, None] & (ks < K)[None, :])
