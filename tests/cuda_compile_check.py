"""Compile every recurrence kernel for a CUDA target without a GPU (run as a script, TRITON_INTERPRET unset).

The interpreter suite cannot see GPU-only failures (type errors in the compiled path, tl.dot shape rules,
layouts, register limits); this catches them on a CPU machine. Usage: ``python tests/cuda_compile_check.py``.

``--resources`` also prints the sm_90 resources of the persistent kernels' RESIDENT variants at
H = 256, 512, 1024 in fp16/bf16/fp32: registers per thread, spill bytes (stores/loads) and stack frame from
``ptxas -v`` on the generated PTX (the values a GPU would report as n_regs / n_spills), and Triton's shared
memory (metadata.shared). Compile-time facts, not timings.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the kernels must be decorated for compilation")

import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import triton  # noqa: E402
from fastrnn.kernels import gru, lstm, rnn  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastrnn.ops.strategy import RESIDENT_NUM_STAGES  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BLOCKS = {"BB": 16, "BH": 64, "BK": 64}


def compile_kernel(fn, dtype: str, inputs: tuple[str, ...], **constexprs):
    """Compile ``fn`` with the pointers named in ``inputs`` in ``dtype`` (the gx/weight/dy side), lengths int64,
    every other pointer fp32 and every other argument int32; returns the compiled kernel."""
    constexprs = {**BLOCKS, **constexprs, "DOT_FP32": dtype == "fp32"}
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "len_ptr":
            signature[name] = "*i64"
        elif name == "bar_ptr":
            signature[name] = "*i32"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}" if name in inputs else "*fp32"
        else:
            signature[name] = "i32"
    consts = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    options = {"num_stages": RESIDENT_NUM_STAGES} if constexprs.get("RESIDENT") else {}
    return triton.compile(ASTSource(fn, signature, constexprs=consts), target=TARGET, options=options)


def compile_persistent(dtype: str, resident: dict[str, int | bool] | None = None) -> list:
    """The persistent kernels, with the GPU tile size (fastrnn.ops.strategy.PERSISTENT_BLOCK_H): streaming, or
    the RESIDENT variant with ``resident`` = {"RESIDENT": True, "BP": .., "BHP": ..}; returns
    [(name, compiled kernel)]."""
    res = resident or {"RESIDENT": False, "BP": 16, "BHP": 16}
    bh = {"BH": 16, "BHP": res["BHP"], "RESIDENT": res["RESIDENT"]}
    lstm_bh = {**bh, "BP": res["BP"]}
    out = []
    lstm_in = ("gx_ptr", "w_ptr", "w_hr_ptr", "y_ptr", "dy_ptr")
    fwd = lstm.lstm_fwd_persistent_kernel
    if resident is None or res["BP"] != res["BHP"]:
        out.append(("lstm_fwd+proj", compile_kernel(
            fwd, dtype, lstm_in, REVERSE=1, HAS_LEN=True, HAS_PROJ=True, SAVE=True, **lstm_bh
        )))  # fmt: skip
    if res["BP"] == res["BHP"]:
        out.append(("lstm_fwd", compile_kernel(
            fwd, dtype, lstm_in, REVERSE=0, HAS_LEN=False, HAS_PROJ=False, SAVE=False, **lstm_bh
        )))  # fmt: skip
    bwd = lstm.lstm_bwd_persistent_kernel
    if resident is None or res["BP"] != res["BHP"]:
        out.append(
            ("lstm_bwd+proj", compile_kernel(bwd, dtype, lstm_in, REVERSE=0, HAS_LEN=True, HAS_PROJ=True, **lstm_bh))
        )
    if res["BP"] == res["BHP"]:
        out.append(
            ("lstm_bwd", compile_kernel(bwd, dtype, lstm_in, REVERSE=1, HAS_LEN=False, HAS_PROJ=False, **lstm_bh))
        )
        gru_in = ("gx_ptr", "w_ptr", "y_ptr", "dy_ptr", "dgx_ptr")
        out.append(("gru_fwd", compile_kernel(
            gru.gru_fwd_persistent_kernel, dtype, gru_in, REVERSE=1, HAS_LEN=True, HAS_BIAS=True, SAVE=True, **bh
        )))  # fmt: skip
        out.append(
            ("gru_bwd", compile_kernel(gru.gru_bwd_persistent_kernel, dtype, gru_in, REVERSE=0, HAS_LEN=True, **bh))
        )
        rnn_in = ("gx_ptr", "w_ptr", "y_ptr", "dy_ptr")
        out.append(("rnn_fwd", compile_kernel(
            rnn.rnn_fwd_persistent_kernel, dtype, rnn_in, REVERSE=0, HAS_LEN=True, ACT=1, SAVE=False, **bh
        )))  # fmt: skip
        out.append(("rnn_bwd", compile_kernel(
            rnn.rnn_bwd_persistent_kernel, dtype, rnn_in, REVERSE=1, HAS_LEN=True, ACT=0, **bh
        )))  # fmt: skip
    return out


def resident_constexprs(H: int, P: int) -> dict[str, int | bool]:
    return {"RESIDENT": True, "BP": max(16, triton.next_power_of_2(P)), "BHP": max(16, triton.next_power_of_2(H))}


def ptxas_resources(kernel) -> tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, stack frame bytes) of a compiled kernel, from
    ``ptxas -v`` on its PTX for sm_90a."""
    ptxas = get_ptxas(TARGET.arch).path  # the ptxas Triton itself assembles sm_90 with
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run(
            [ptxas, "-v", "--gpu-name", "sm_90a", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    stack = int(re.search(r"(\d+) bytes stack frame", log).group(1))
    return regs, stores, loads, stack


def print_resources() -> None:
    """The table of the module docstring (``--resources``)."""
    print("| kernel | H | dtype | regs | spill st/ld B | stack B | shared B |")
    print("|---|---|---|---|---|---|---|")
    for H in (256, 512, 1024):
        for dtype in ("fp16", "bf16", "fp32"):
            for name, k in compile_persistent(dtype, resident_constexprs(H, H)):
                regs, st, ld, stack = ptxas_resources(k)
                print(f"| {name} | {H} | {dtype} | {regs} | {st}/{ld} | {stack} | {k.metadata.shared} |")


def main() -> None:
    for dtype in ("fp32", "bf16"):
        lstm_in = ("gx_ptr", "w_ptr", "w_hr_ptr", "y_ptr", "dy_ptr")
        compile_kernel(lstm.lstm_fwd_kernel, dtype, lstm_in, REVERSE=1, HAS_LEN=True, HAS_PROJ=True, SAVE=True)
        compile_kernel(lstm.lstm_fwd_kernel, dtype, lstm_in, REVERSE=0, HAS_LEN=False, HAS_PROJ=False, SAVE=False)
        compile_kernel(lstm.lstm_bwd_kernel, dtype, lstm_in, REVERSE=0, HAS_LEN=True, HAS_PROJ=True)
        compile_kernel(lstm.lstm_bwd_kernel, dtype, lstm_in, REVERSE=1, HAS_LEN=False, HAS_PROJ=False)
        gru_in = ("gx_ptr", "w_ptr", "y_ptr", "dy_ptr", "dgx_ptr")
        compile_kernel(gru.gru_fwd_kernel, dtype, gru_in, REVERSE=1, HAS_LEN=True, HAS_BIAS=True, SAVE=True)
        compile_kernel(gru.gru_bwd_kernel, dtype, gru_in, REVERSE=0, HAS_LEN=True)
        rnn_in = ("gx_ptr", "w_ptr", "y_ptr", "dy_ptr")
        compile_kernel(rnn.rnn_fwd_kernel, dtype, rnn_in, REVERSE=0, HAS_LEN=True, ACT=1, SAVE=False)
        compile_kernel(rnn.rnn_bwd_kernel, dtype, rnn_in, REVERSE=1, HAS_LEN=True, ACT=0)
        compile_persistent(dtype)
        compile_persistent(dtype, resident_constexprs(256, 256))
        compile_persistent(dtype, resident_constexprs(256, 128))  # proj_size
    print("compiled")
    if "--resources" in sys.argv:
        print_resources()


if __name__ == "__main__":
    main()
