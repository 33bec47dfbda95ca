"""Compile every recurrence kernel for sm_90a without a GPU (run as a script, TRITON_INTERPRET unset).

The interpreter suite cannot see GPU-only failures (type errors in the compiled path, tl.dot shape rules,
layouts, register limits); this catches them on a CPU machine. Each configuration runs fastrnn's real
launchers with their real batch and hidden sizes (fastrnn.ops.compiled) and compiles every kernel they would
launch, forward, backward and the weight-gradient GEMMs, with Triton's own specialization of the arguments.
It fails on a compile error, and on register spills in a persistent kernel with resident weights at the
standard grid's headline shape (LSTM B=16 H=768 fp16).

Usage: ``python tests/cuda_compile_check.py [--resources]``; ``--resources`` prints every kernel's registers,
spills, shared memory and MMA kind.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the kernels must be decorated for compilation")

import torch  # noqa: E402

from fastrnn.ops import compiled  # noqa: E402

#: (mode, B, H, proj, dtype, strategy, lengths, reverse, resident weights allowed)
CONFIGS = [
    *[(mode, 16, 256, 0, torch.bfloat16, s, True, s == "tiled", True)
      for mode in ("lstm", "gru", "rnn_tanh", "rnn_relu") for s in ("tiled", "persistent")],
    *[(mode, 40, 200, 0, torch.float32, "persistent", False, True, r) for mode in ("lstm", "gru", "rnn_relu")
      for r in (True, False)],
    ("lstm", 16, 256, 128, torch.bfloat16, "persistent", True, False, True),
    ("lstm", 16, 256, 128, torch.float32, "tiled", True, True, True),
    ("lstm", 16, 768, 0, torch.float16, "persistent", False, False, True),
]  # fmt: skip


def run(resources: bool) -> list[str]:
    problems = []
    for mode, B, H, proj, dtype, strategy, lengths, reverse, resident in CONFIGS:
        os.environ["FASTRNN_RESIDENT_WEIGHTS"] = "1" if resident else "0"
        for launch in compiled.launches(mode, B, H, dtype, strategy, proj=proj, lengths=lengths, reverse=reverse):
            kernel = compiled.compile_launch(launch)
            if not resources and not (H == 768 and launch.name.endswith("_resident")):
                continue
            r = compiled.resources(kernel)
            label = f"{launch.name} {mode} B={B} H={H} P={proj or H} {str(dtype)[6:]}"
            if resources:
                print(f"| {label} | {r['regs']} | {r['spill_bytes']} | {r['smem_bytes']} | {r['mma']} |")
            if H == 768 and r["spill_bytes"]:
                problems.append(f"{label}: {r['spill_bytes']} bytes of register spills")
    return problems


def main() -> None:
    resources = "--resources" in sys.argv
    if resources:
        print("| kernel | regs | spill B | shared B | mma |")
        print("|---|---|---|---|---|")
    problems = run(resources)
    if problems:
        sys.exit("\n".join(problems))
    print("compiled")


if __name__ == "__main__":
    main()
