"""The kernels a recurrence would launch on a GPU, compiled for that GPU on a machine without one.

:func:`launches` runs fastrnn's real launchers (fastrnn.ops.lstm, gru, rnn) on small CPU stand-in tensors with
the real batch and hidden sizes (the sequence length does not specialize a kernel) and captures every launch
instead of running it: the plan (kernel, grid, constexprs, options) and the arguments. :func:`compile_launch`
compiles a captured launch with Triton's own compiler for a CUDA target, with the specialization Triton's JIT
would give those arguments (dtypes, 16-byte alignment and divisibility hints), and :func:`resources` reads the
compiled kernel: registers and spills from ``ptxas -v``, shared memory, the MMA kind and instruction counts.

Needs Triton's compiler, not its interpreter: import this module with ``TRITON_INTERPRET`` unset. No GPU is
touched. Used by ``tests/cuda_compile_check.py`` and ``bench/static_report.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

#: The target the kernels are compiled for: Hopper (sm_90a), as the H200 the benchmarks run on.
TARGET_ARCH = 90
#: Multiprocessors of that GPU (H200 and H100 SXM): the persistent grids are planned for this many programs.
TARGET_SMS = 132


@dataclasses.dataclass
class Launch:
    """One captured launch: the kernel, its grid, positional arguments and keyword constexprs/options."""

    name: str
    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict[str, Any]
    plan: Any = None  # the strategy.Plan of a recurrence kernel (None for the weight-gradient GEMM)


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", TARGET_ARCH, 32)


@contextlib.contextmanager
def _capturing(sms: int) -> Iterator[list[Launch]]:
    from fastrnn.backend import interpreting

    if interpreting():
        raise RuntimeError("fastrnn.ops.compiled needs Triton's compiler: unset TRITON_INTERPRET")
    from fastrnn.kernels.common import weight_grad_kernel
    from fastrnn.ops import _launch as L
    from fastrnn.ops import strategy as S

    captured: list[Launch] = []

    def launch(plan, *args, **cell_constexprs):
        consts = {k: v for k, v in plan.constexprs.items() if k in plan.kernel.arg_names}
        opts = {k: v for k, v in plan.options.items() if k != "launch_cooperative_grid"}
        captured.append(
            Launch(
                plan.name, plan.kernel, (plan.grid.programs,), (*args, plan.grid.n_h),
                {**cell_constexprs, **consts, **opts}, plan,
            )  # fmt: skip
        )

    def weight_grad(g, x, mm_dtype, prec):
        M, K = g.shape[-1], x.shape[-1]
        g2, x2 = g.reshape(-1, M), x.reshape(-1, K)
        out = torch.zeros((M, K), dtype=torch.float32)
        b = L.WEIGHT_GRAD_BLOCKS
        grid = (-(-M // b["BM"]), -(-K // b["BK"]))
        kwargs = {**b, "PREC": prec, "MM_DTYPE": L._TL_DTYPES[mm_dtype]}
        captured.append(Launch("weight_grad", weight_grad_kernel, grid, (g2, x2, out, g2.shape[0], M, K), kwargs))
        return out

    saved = (S.Plan.launch, L.check_device, S.max_programs, L.weight_grad)
    S.Plan.launch = launch
    L.check_device = lambda t: None
    S.max_programs = lambda device: sms
    L.weight_grad = weight_grad
    try:
        yield captured
    finally:
        S.Plan.launch, L.check_device, S.max_programs, L.weight_grad = saved


def launches(
    mode: str,
    B: int,
    H: int,
    dtype: torch.dtype,
    strategy: str,
    proj: int = 0,
    lengths: bool = False,
    reverse: bool = False,
    backward: bool = True,
    sms: int = TARGET_SMS,
) -> list[Launch]:
    """The launches of one direction of one layer (forward, then with ``backward`` the backward and its weight
    GEMMs) of ``mode`` at batch B and hidden H under ``strategy``, on a GPU with ``sms`` multiprocessors."""
    from fastrnn.ops import gru, lstm, rnn
    from fastrnn.reference import GATES

    T, P = 2, proj or H
    G = GATES[mode] * H
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, dt=dtype):
        return torch.randn(shape, generator=gen).to(dt)

    gx, h0, w = rand(T, B, G), rand(B, P), rand(G, P)
    lens = torch.full((B,), T, dtype=torch.int64) if lengths else None
    with _capturing(sms) as captured:
        if mode == "lstm":
            w_hr = rand(P, H) if proj else None
            out = lstm.lstm(gx, h0, rand(B, H), w, w_hr, lens, reverse, backward, strategy)
            if backward:
                dy, dh, dc = rand(T, B, P), rand(B, P, dt=torch.float32), rand(B, H, dt=torch.float32)
                lstm.lstm_backward(dy, dh, dc, *out[3:], w, w_hr, lens, reverse, strategy)
        elif mode == "gru":
            out = gru.gru(gx, h0, w, rand(G), lens, reverse, backward, strategy)
            if backward:
                gru.gru_backward(rand(T, B, H), rand(B, H, dt=torch.float32), *out[2:], w, lens, reverse, strategy)
        else:
            act = mode[4:]
            out = rnn.rnn(gx, h0, w, lens, reverse, act, backward, strategy)
            if backward:
                rnn.rnn_backward(rand(T, B, H), rand(B, H, dt=torch.float32), out[2], w, lens, reverse, act, strategy)
    return captured


def compile_launch(launch: Launch):
    """Compile a captured launch for the target with the specialization Triton's JIT would give its arguments."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel, target = launch.kernel, _target()
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def _ptxas(ptx: str) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(TARGET_ARCH).path, "-v", "--gpu-name", f"sm_{TARGET_ARCH}a", src]
        out = os.path.join(tmp, "k.cubin")
        return subprocess.run([*cmd, "-o", out], capture_output=True, text=True, check=True).stderr


def resources(compiled) -> dict[str, Any]:
    """What the compiled kernel uses: ``regs`` per thread, ``spill_bytes`` (spill stores + loads), ``stack_bytes``,
    ``smem_bytes`` (Triton's shared memory), ``mma`` (``wgmma`` | ``mma`` | ``fma``: the fastest matrix
    instruction in the PTX), and per-kernel PTX counts of ``wgmma``, ``mma_sync`` and fp32 ``fma``
    instructions (straight-line code: a loop body counts once), and ``mma_warps``, the warpsPerCTA (M, N) of the
    first matrix layout (how the dot's operands are shared among the warps)."""
    log = _ptxas(compiled.asm["ptx"])
    ptx = compiled.asm["ptx"]
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    stack = int(re.search(r"(\d+) bytes stack frame", log).group(1))
    counts = {"wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"), "fma": ptx.count("fma.rn.f32")}
    kind = "wgmma" if counts["wgmma"] else "mma" if counts["mma_sync"] else "fma"
    layout = re.search(r"nvidia_mma<\{versionMajor = \d[^}]*warpsPerCTA = \[(\d+), (\d+)", compiled.asm["ttgir"])
    return {
        "regs": regs, "spill_bytes": stores + loads, "stack_bytes": stack, "smem_bytes": compiled.metadata.shared,
        "mma": kind, "num_warps": compiled.metadata.num_warps,
        "mma_warps": (int(layout.group(1)), int(layout.group(2))) if layout else (1, 1), **counts,
    }  # fmt: skip


def _nvdisasm(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-c", f.name], capture_output=True, text=True, check=True).stdout


def step_sass(compiled) -> dict[str, int]:
    """SASS instruction counts (per warp) of the kernel's outermost loop, the time loop of every recurrence
    kernel (its inner loops, one iteration each for one tile per program, counted once): ``instructions`` (NOPs
    excluded) and the counts of ``tensor`` (HGMMA + HMMA), ``barriers`` (BAR), ``shared`` (LDS/STS/LDSM/STSM)
    and ``global`` (LDG/STG/ATOMG/RED) instructions. Read with the nvdisasm Triton ships."""
    instrs: list[str] = []
    labels: dict[str, int] = {}
    for line in _nvdisasm(compiled.asm["cubin"]).splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instrs)
            continue
        ins = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line)
        if ins and not ins.group(1).startswith("NOP"):
            instrs.append(re.sub(r"^@!?U?P\w+\s+", "", ins.group(1)))
    loops = []
    for i, ins in enumerate(instrs):
        target = re.search(r"BRA\s+(?:`\()?(\.L_x_\d+)", ins)
        if target and labels.get(target.group(1), len(instrs)) < i:
            loops.append((labels[target.group(1)], i + 1))
    lo, hi = max(loops, key=lambda span: span[1] - span[0]) if loops else (0, len(instrs))
    ops = [ins.split()[0].split(".")[0] for ins in instrs[lo:hi]]

    def n(*names):
        return sum(op in names for op in ops)

    return {
        "instructions": len(ops),
        "tensor": n("HGMMA", "HMMA"),
        "barriers": n("BAR"),
        "shared": n("LDS", "STS", "LDSM", "STSM"),
        "global": n("LDG", "STG", "ATOMG", "RED"),
    }
