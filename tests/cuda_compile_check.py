"""Compile every recurrence kernel for a CUDA target without a GPU (run as a script, TRITON_INTERPRET unset).

The interpreter suite cannot see GPU-only failures (type errors in the compiled path, tl.dot shape rules,
layouts, register limits); this catches them on a CPU machine. Usage: ``python tests/cuda_compile_check.py``.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the kernels must be decorated for compilation")

import triton  # noqa: E402
from fastrnn.kernels import gru, lstm, rnn  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BLOCKS = {"BB": 16, "BH": 64, "BK": 64}


def compile_kernel(fn, dtype: str, inputs: tuple[str, ...], **constexprs) -> None:
    """Compile ``fn`` with the pointers named in ``inputs`` in ``dtype`` (the gx/weight/dy side), lengths int64,
    every other pointer fp32 and every other argument int32."""
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
    triton.compile(ASTSource(fn, signature, constexprs=consts), target=TARGET)


def compile_persistent(dtype: str) -> None:
    """The persistent kernels, with the GPU tile size (fastrnn.ops.strategy.PERSISTENT_BLOCK_H)."""
    bh = {"BH": 16}
    lstm_in = ("gx_ptr", "w_ptr", "w_hr_ptr", "y_ptr", "dy_ptr")
    fwd = lstm.lstm_fwd_persistent_kernel
    compile_kernel(fwd, dtype, lstm_in, REVERSE=1, HAS_LEN=True, HAS_PROJ=True, SAVE=True, **bh)
    compile_kernel(fwd, dtype, lstm_in, REVERSE=0, HAS_LEN=False, HAS_PROJ=False, SAVE=False, **bh)
    bwd = lstm.lstm_bwd_persistent_kernel
    compile_kernel(bwd, dtype, lstm_in, REVERSE=0, HAS_LEN=True, HAS_PROJ=True, **bh)
    compile_kernel(bwd, dtype, lstm_in, REVERSE=1, HAS_LEN=False, HAS_PROJ=False, **bh)
    gru_in = ("gx_ptr", "w_ptr", "y_ptr", "dy_ptr", "dgx_ptr")
    compile_kernel(
        gru.gru_fwd_persistent_kernel, dtype, gru_in, REVERSE=1, HAS_LEN=True, HAS_BIAS=True, SAVE=True, **bh
    )
    compile_kernel(gru.gru_bwd_persistent_kernel, dtype, gru_in, REVERSE=0, HAS_LEN=True, **bh)
    rnn_in = ("gx_ptr", "w_ptr", "y_ptr", "dy_ptr")
    compile_kernel(rnn.rnn_fwd_persistent_kernel, dtype, rnn_in, REVERSE=0, HAS_LEN=True, ACT=1, SAVE=False, **bh)
    compile_kernel(rnn.rnn_bwd_persistent_kernel, dtype, rnn_in, REVERSE=1, HAS_LEN=True, ACT=0, **bh)


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
    print("compiled")


if __name__ == "__main__":
    main()
