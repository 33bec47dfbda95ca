"""Compiled-code report: what every kernel of the standard grid compiles to for an H200, and an ESTIMATE of its
time per step. No GPU is used and nothing here is a measurement.

    python bench/static_report.py [--out DIR] [--grid NAME ...] [--batch B] [--hidden H] [--dtype DT]

For every (case, dtype) of the standard grid (bench/grid.py), both passes (``fwd``, ``fwd+bwd``) and both
strategies (``tiled``, ``persistent``), the real launchers are run on CPU stand-ins and every kernel they would
launch is compiled for sm_90a with Triton's own compiler and the launch's real specialization
(fastrnn.ops.compiled). The compiled facts (registers, spills, shared memory, MMA kind, and the SASS of the
time loop: instructions, tensor-core instructions, barriers) go into ``bench/results/static-<date>.csv`` next
to the per-step model below and a cuDNN figure per row with its source.

The per-step model (an estimate; constants in :data:`H200`, each with where it comes from). A step of the
slowest program is a chain: wait for the other programs, read the exchanged state, run the dots, run the rest
of the step's instructions. The model adds the four (it assumes no overlap between them):

    sync   persistent: H200["flag_sync_us"] per phase (a producer's release fence plus its flag reaching a
           consumer's poll); tiled: 0 (block barriers are in ``issue``)
    state  H200["l2_latency_us"] + bytes read from other programs / per-SM L2 bandwidth (forward: the
           exchanged h_{t-1} chunks; backward: the partials of every unit tile, and the partials written);
           streamed weight slices add their bytes here too (tiled: all of W_hh, every step)
    mma    the longer of the step's FMAs at the SM's tensor rate and its shared-memory operand reads at
           128 B/clk (a weight slice is read from shared memory every step: Triton keeps no dot operand in
           registers across loop iterations; an operand is read once per group of warps sharing it, from the
           compiled layout), plus staging the state chunks into shared memory
    issue  the time loop's other SASS instructions, one per warp scheduler per clock (4 per SM)

A forward+backward step adds the backward kernel's step, and per step (divided by T) the weight-gradient
GEMMs and the input projection's GEMMs (forward; with the backward, its two gradient GEMMs) at
H200["gemm_efficiency"] of the measured matrix rate. Stacks (deep/bidir) run layers x directions recurrences
one after another. ``est_ratio_vs_cudnn`` = est_us_per_step / cudnn_us_per_step; at the anchor's shape,
``est_ratio_vs_anchor`` compares with the measured fp16 figure whatever the dtype (for bf16 a conservative
comparison: cuDNN's bf16 path is its standard algorithm, no faster than its fp16 persistent one). fp32 GEMMs
run on TF32 on both sides (torch.backends.cudnn.allow_tf32, torch's default, which fastrnn's fp32 recurrences,
input projections and weight gradients follow as cuDNN does).

cuDNN figures: the one measured anchor (FlashRNN's H100 benchmark, LSTM B=16 T=1024 H=768 fp16: 2.01 ms
forward, 5.19 ms forward+backward); everything else is a model of cuDNN (see :func:`cudnn_us_per_step`),
labelled ``model:`` in the ``cudnn_source`` column. When a GPU run exists, compare its measured ratios with
these and correct the model (the README shows both).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

from bench.grid import GRID, Case  # noqa: E402
from fastrnn.ops import compiled  # noqa: E402
from fastrnn.ops import strategy as S  # noqa: E402
from fastrnn.reference import GATES  # noqa: E402

#: The machine the estimate is for, and where each number comes from. All are estimates or datasheet leads.
H200 = {
    "clock_ghz": 1.98,  # SM clock read under load on this workplace's H200 (device tool, KINDS.md)
    "sms": 132,
    "smem_bytes_per_clk": 128,  # 32 banks x 4 B per SM per clock (Hopper)
    "l2_bytes_per_clk": 64,  # one SM's read port to L2 (assumed)
    "l2_total_tbs": 5.5,  # aggregate L2 bandwidth (H100 microbenchmarks report ~5.5 TB/s)
    "l2_latency_us": 0.30,  # SM -> L2 -> SM round trip, far partition included (~600 cycles; assumed)
    "barrier_us": 1.0,  # a grid-wide barrier (the brief's anchor)
    "flag_sync_us": 0.75,  # release fence (one L2 round trip) + the flag reaching a poll (1.5 round trips)
    "fma_per_clk": {"wgmma16": 2048, "wgmma32": 1024, "mma16": 1024, "mma32": 512, "fma": 128},
    # bf16: an 8192^3 GEMM measured on this workplace's H200; fp32 (no TF32) and TF32: the datasheet's dense rates
    # (67, 495) scaled by that measurement's share of its datasheet rate (788 / 989)
    "gemm_tflops": {"fp16": 788.0, "bf16": 788.0, "fp32": 67.0 * 0.8, "tf32": 495.0 * 0.8},
    "gemm_efficiency": 0.6,  # of gemm_tflops for the recurrence-sized GEMMs (assumed)
    "issue_per_clk": 4,  # warp instructions per SM per clock (4 schedulers)
}

#: The one measured cuDNN figure (FlashRNN's speed benchmark, NX-AI/flashrnn; H100 SXM, cuDNN's persistent
#: algorithm): ms for T=1024 steps.
CUDNN_ANCHOR = {"fwd": 2.01, "fwd+bwd": 5.19}
ANCHOR_SOURCE = "measured: FlashRNN speed benchmark (NX-AI/flashrnn), H100 SXM, LSTM B=16 T=1024 H=768 fp16"
#: cuDNN's standard algorithm runs a recurrent GEMM kernel and a pointwise kernel per step; a dependent kernel
#: cannot start sooner than this after the previous one (assumed).
CUDNN_KERNEL_FLOOR_US = 2.0
#: forward+backward / forward of the anchor (5.19 / 2.01), used for cuDNN's backward where nothing is measured
CUDNN_TRAIN_FACTOR = CUDNN_ANCHOR["fwd+bwd"] / CUDNN_ANCHOR["fwd"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PASSES = ("fwd", "fwd+bwd")
STRATEGIES = ("tiled", "persistent")

COLUMNS = (
    "bench", "cell", "B", "T", "H", "dtype", "pass", "strategy", "auto", "programs", "regs", "spill_bytes",
    "smem_bytes", "mma", "sass_per_step", "tc_instr_per_warp", "barriers_per_step", "smem_bytes_per_step",
    "global_bytes_per_step", "flag_waits_per_step", "est_sync_us", "est_state_us", "est_mma_us", "est_issue_us",
    "est_gemm_us", "est_us_per_step", "cudnn_us_per_step", "cudnn_source", "est_ratio_vs_cudnn",
    "est_ratio_vs_anchor", "label",
    "triton", "torch", "fastrnn_commit", "date",
)  # fmt: skip
LABEL = "estimate from compiled code (no GPU)"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _us(clocks: float) -> float:
    return clocks / (H200["clock_ghz"] * 1e3)


def _l2_bytes_per_us(programs: int) -> float:
    per_sm = H200["l2_bytes_per_clk"] * H200["clock_ghz"] * 1e3
    return min(per_sm, H200["l2_total_tbs"] * 1e6 / max(programs, 1))


@dataclasses.dataclass
class KernelEstimate:
    """One recurrence kernel's compiled facts and the model's per-step terms."""

    name: str
    programs: int
    res: dict
    sass: dict
    smem_per_step: float
    global_per_step: float
    flag_waits: int
    sync_us: float
    state_us: float
    mma_us: float
    issue_us: float

    @property
    def us(self) -> float:
        return self.sync_us + self.state_us + self.mma_us + self.issue_us


def _tensor_rate(kind: str, itemsize: int) -> float:
    if kind == "fma":
        return H200["fma_per_clk"]["fma"]
    return H200["fma_per_clk"][f"{'wgmma' if kind == 'wgmma' else 'mma'}{16 if itemsize == 2 else 32}"]


def estimate_kernel(launch, case: Case, dtype: torch.dtype, backward: bool) -> KernelEstimate:
    """The model's per-step terms for one captured recurrence launch (see the module docstring)."""
    kernel = compiled.compile_launch(launch)
    res, sass = compiled.resources(kernel), compiled.step_sass(kernel)
    plan, H = launch.plan, case.H
    P, B = H, case.B
    grid = plan.grid
    itemsize = 2 if dtype in (torch.float16, torch.bfloat16) else 4
    rows = S.gate_slots(case.cell) * grid.block_u
    persistent = grid.strategy == "persistent"
    warps = res["num_warps"]
    tiles_b = _cdiv(B, grid.block_n * grid.groups)  # batch tiles per program
    tiles_u = _cdiv(_cdiv(H, grid.block_u), grid.n_h)  # unit tiles per program
    bn = grid.block_n
    # the dots of one step of one (unit tile, batch tile): forward W[rows, P] @ h^T[P, BN]; backward
    # W^T[P, rows] @ dG^T[rows, BN]
    fmas = rows * P * bn * tiles_b * tiles_u
    a_bytes = rows * P * itemsize * tiles_b * tiles_u  # the weight slice, from shared memory
    b_bytes = (P if not backward else rows) * bn * itemsize * tiles_b * tiles_u  # the state side
    staged = P * bn * itemsize * tiles_b * tiles_u if not backward else rows * bn * itemsize * tiles_b * tiles_u
    rate = _tensor_rate(res["mma"], itemsize)
    # operands are read once per group of warps that shares them: a wgmma warpgroup (4 warps) reads all of its
    # A rows and its B columns, an mma.sync warp its own rows and columns, so A is read once per group along N
    # and B once per group along M (warpsPerCTA of the compiled layout)
    wm, wn = res["mma_warps"]
    groups_m = max(1, wm // 4) if res["mma"] == "wgmma" else wm
    smem_read = a_bytes * wn + b_bytes * groups_m
    mma_clk = max(fmas / rate, smem_read / H200["smem_bytes_per_clk"])
    mma_us = _us(mma_clk + staged / H200["smem_bytes_per_clk"])
    # what crosses L2 in a step: the state from every program (forward), partials in and out (backward)
    if backward:
        n_units = _cdiv(H, grid.block_u)
        read = n_units * grid.block_u * bn * 4 * tiles_b * tiles_u  # partials of its units from every unit tile
        written = P * bn * 4 * tiles_b * tiles_u  # its own partial of dh_{t-1}
        moved = read + written
    else:
        moved = P * bn * itemsize * tiles_b * tiles_u
    if not grid.resident:
        moved += rows * P * itemsize * tiles_b * tiles_u  # the streamed slice
    bw = _l2_bytes_per_us(grid.programs)
    state_us = H200["l2_latency_us"] + moved / bw
    flag_waits = 1 if persistent else 0
    sync_us = H200["flag_sync_us"] * flag_waits
    other = max(0, sass["instructions"] - sass["tensor"])
    issue_us = _us(other * warps / H200["issue_per_clk"])
    return KernelEstimate(
        launch.name, grid.programs, res, sass, smem_read + 2 * staged, moved, flag_waits,
        sync_us, state_us, mma_us, issue_us,
    )  # fmt: skip


def gemm_us(case: Case, dtype: str, train: bool, rate_dtype: str | None = None) -> float:
    """Per step: the input projection (and with ``train`` its two gradient GEMMs and the dW_hh GEMM) of every
    layer and direction, at gemm_efficiency of the matrix rate of ``rate_dtype`` (default: ``dtype``, TF32
    for fp32)."""
    G = GATES[case.cell] * case.H
    tokens = case.B * case.T
    flops = 0.0
    for layer in range(case.layers):
        inp = case.I if layer == 0 else case.H * case.directions
        per_dir = 2 * tokens * inp * G * (3 if train else 1) + (2 * tokens * G * case.H if train else 0)
        flops += per_dir * case.directions
    rate_dtype = rate_dtype or ("tf32" if dtype == "fp32" else dtype)
    rate = H200["gemm_tflops"][rate_dtype] * H200["gemm_efficiency"] * 1e6  # flop per µs
    return flops / rate / case.T


def cudnn_us_per_step(case: Case, dtype: str, pass_: str) -> tuple[float, str]:
    """cuDNN's time per step of the whole stack, and where it comes from.

    Measured: the anchor (LSTM B=16 H=768 fp16). Model elsewhere (the same shape in bf16 included: PyTorch
    gives bf16 cuDNN's standard algorithm; the fp16 anchor is a lower bound there, see ``anchor_ratio``):
      * cuDNN's persistent algorithm (fp16, unidirectional, one layer, H <= 1024 a multiple of 128; LSTM with B
        a multiple of 8 up to 128): the anchor's barrier (1 µs) plus its compute scaled by gates and H^2 B;
      * its standard algorithm: per layer and direction two dependent kernels per step, each at least
        CUDNN_KERNEL_FLOOR_US, the GEMM at least its FLOPs at the measured rate;
      * forward+backward: the forward times the anchor's ratio (5.19 / 2.01) where not measured.
    """
    anchor = case.cell == "lstm" and (case.B, case.H, case.layers, case.bidir, case.lengths) == (16, 768, 1, False,
                                                                                                 None)
    if anchor and dtype == "fp16":
        return CUDNN_ANCHOR[pass_] * 1e3 / 1024, ANCHOR_SOURCE
    G = GATES[case.cell] * case.H
    persistent = (
        dtype == "fp16" and case.layers == 1 and not case.bidir and case.H <= 1024 and case.H % 128 == 0
        and case.lengths is None and (case.cell != "lstm" or (case.B % 8 == 0 and case.B <= 128))
    )  # fmt: skip
    if persistent:
        compute = (CUDNN_ANCHOR["fwd"] * 1e3 / 1024 - H200["barrier_us"]) * (G * case.H * case.B) / (4 * 768 * 768 * 16)
        fwd, source = H200["barrier_us"] + compute, "model: persistent, the anchor's barrier + its compute scaled"
    else:
        rate = "tf32" if dtype == "fp32" else dtype  # cuDNN's fp32 RNNs use TF32 by default (allow_tf32)
        gemm = 2 * case.B * G * case.H / (H200["gemm_tflops"][rate] * 1e6)
        fwd = (max(CUDNN_KERNEL_FLOOR_US, gemm) + CUDNN_KERNEL_FLOOR_US) * case.layers * case.directions
        fwd += gemm_us(case, dtype, False)
        source = f"model: standard algorithm, 2 kernels/step of >= {CUDNN_KERNEL_FLOOR_US} µs"
    if pass_ == "fwd+bwd":
        return fwd * CUDNN_TRAIN_FACTOR, source + f"; x{CUDNN_TRAIN_FACTOR:.2f} for fwd+bwd"
    return fwd, source


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FASTRNN_COMMIT", "unknown")


def rows_for(case: Case, dtype: str, meta: dict) -> list[dict]:
    """The report's rows of one (case, dtype): both passes, both strategies."""
    torch_dtype = DTYPES[dtype]
    cuda = torch.device("cuda")
    saved = S.max_programs
    S.max_programs = lambda device: H200["sms"]
    try:
        auto = S.auto_choice(case.cell, case.B, case.H, case.H, torch_dtype, cuda)
    finally:
        S.max_programs = saved
    out = []
    for strategy in STRATEGIES:
        launches = compiled.launches(case.cell, case.B, case.H, torch_dtype, strategy, lengths=case.lengths is not None,
                                     sms=H200["sms"])  # fmt: skip
        recurrences = [launch for launch in launches if launch.plan is not None]
        fwd = estimate_kernel(recurrences[0], case, torch_dtype, False)
        bwd = estimate_kernel(recurrences[1], case, torch_dtype, True)
        stack = case.layers * case.directions
        at_anchor = case.cell == "lstm" and (case.B, case.H, stack, case.lengths) == (16, 768, 1, None)
        for pass_ in PASSES:
            kernels = [fwd] if pass_ == "fwd" else [fwd, bwd]
            gemm = gemm_us(case, dtype, pass_ == "fwd+bwd")
            est = stack * sum(k.us for k in kernels) + gemm
            cudnn, source = cudnn_us_per_step(case, dtype, pass_)
            out.append({
                "bench": case.bench, "cell": case.cell, "B": case.B, "T": case.T, "H": case.H, "dtype": dtype,
                "pass": pass_, "strategy": strategy, "auto": int(strategy == auto), "programs": fwd.programs,
                "regs": max(k.res["regs"] for k in kernels),
                "spill_bytes": max(k.res["spill_bytes"] for k in kernels),
                "smem_bytes": max(k.res["smem_bytes"] for k in kernels),
                "mma": "/".join(dict.fromkeys(k.res["mma"] for k in kernels)),
                "sass_per_step": "/".join(str(k.sass["instructions"]) for k in kernels),
                "tc_instr_per_warp": "/".join(str(k.sass["tensor"]) for k in kernels),
                "barriers_per_step": "/".join(str(k.sass["barriers"]) for k in kernels),
                "smem_bytes_per_step": "/".join(f"{k.smem_per_step:.0f}" for k in kernels),
                "global_bytes_per_step": "/".join(f"{k.global_per_step:.0f}" for k in kernels),
                "flag_waits_per_step": sum(k.flag_waits for k in kernels),
                "est_sync_us": round(stack * sum(k.sync_us for k in kernels), 3),
                "est_state_us": round(stack * sum(k.state_us for k in kernels), 3),
                "est_mma_us": round(stack * sum(k.mma_us for k in kernels), 3),
                "est_issue_us": round(stack * sum(k.issue_us for k in kernels), 3),
                "est_gemm_us": round(gemm, 3), "est_us_per_step": round(est, 3),
                "cudnn_us_per_step": round(cudnn, 3), "cudnn_source": source,
                "est_ratio_vs_cudnn": round(est / cudnn, 3),
                "est_ratio_vs_anchor": round(est / (CUDNN_ANCHOR[pass_] * 1e3 / 1024), 3) if at_anchor else "",
                "label": LABEL, **meta,
            })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="directory of the CSV")
    parser.add_argument("--grid", nargs="*", default=None, help="benchmark names (default: the whole grid)")
    parser.add_argument("--batch", type=int, default=None, help="only the cases of this batch size")
    parser.add_argument("--hidden", type=int, default=None, help="only the cases of this hidden size")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="only this dtype")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # compile, never interpret (read when the kernels are first imported)
    import triton

    today = datetime.date.today().isoformat()
    meta = {"triton": triton.__version__, "torch": torch.__version__, "fastrnn_commit": _commit(), "date": today}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"static-{today}.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for case in GRID:
            if (args.grid and case.bench not in args.grid) or args.batch not in (None, case.B):
                continue
            if args.hidden not in (None, case.H):
                continue
            for dtype in case.dtypes:
                if args.dtype not in (None, dtype):
                    continue
                for row in rows_for(case, dtype, meta):
                    writer.writerow(row)
                    f.flush()
                    mark = "*" if row["auto"] else " "
                    print(f"{mark} {row['bench']:16s} {row['cell']:8s} B={row['B']:<4d} H={row['H']:<5d} {dtype} "
                          f"{row['pass']:7s} {row['strategy']:10s} est {row['est_us_per_step']:8.2f} µs/step  "
                          f"cuDNN {row['cudnn_us_per_step']:6.2f}  ratio {row['est_ratio_vs_cudnn']:6.2f}  "
                          f"regs {row['regs']} spill {row['spill_bytes']} smem {row['smem_bytes']}", flush=True)
    os.replace(tmp, path)
    print(f"wrote {path} ({LABEL}; * = auto's pick)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
