"""What every cell's launcher shares: device checks, dtypes, block sizes, buffers and the launch counter."""

from __future__ import annotations

import collections

import torch
import triton

from fastrnn.backend import interpreting

#: Kernel launches per kernel name, incremented by every launcher (tests use it to prove the Triton path ran).
launch_counts: collections.Counter[str] = collections.Counter()

#: Batch rows per program (tl.dot needs M >= 16 on GPU; rows past B are masked).
BLOCK_B = 16
#: Cap on the hidden-tile and reduction-chunk sizes.
MAX_BLOCK = 64


def check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"fastrnn.ops runs on CUDA tensors, got a tensor on {t.device.type!r}; "
            "set TRITON_INTERPRET=1 to run the Triton kernels on CPU"
        )


def matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent matmuls read their operands in: fp16/bf16 stay (tensor cores, fp32 accumulate),
    everything else runs in fp32 with exact ("ieee") products, so fp32 results track the fp64 reference."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def dot_fp32(mm_dtype: torch.dtype) -> bool:
    """Whether the kernels upcast tl.dot operands to fp32: for fp32, and for bf16 under the interpreter,
    whose bf16 tl.dot is broken."""
    return mm_dtype == torch.float32 or (interpreting() and mm_dtype == torch.bfloat16)


def block(n: int) -> int:
    """A tile size for a dimension of n: a power of two in [16, MAX_BLOCK]."""
    return max(16, min(MAX_BLOCK, triton.next_power_of_2(max(n, 1))))


def grid(batch: int) -> tuple[int]:
    return (triton.cdiv(batch, BLOCK_B),)


def count(name: str) -> None:
    launch_counts[name] += 1


def state_slots(steps: int, save: bool) -> int:
    """Slots of a state buffer (kernels/common.py state_slots): every state when saving, else ping-pong."""
    return steps + 1 if save else min(steps + 1, 2)


def _slot(i: int, save: bool) -> int:
    return i if save else i % 2


def state_buffer(init: torch.Tensor, steps: int, reverse: bool, save: bool) -> torch.Tensor:
    """fp32 [slots, B, N] state buffer with the initial state in the slot the first step reads."""
    buf = torch.empty((state_slots(steps, save), *init.shape), dtype=torch.float32, device=init.device)
    buf[_slot(steps if reverse else 0, save)].copy_(init)
    return buf


def final_state(buf: torch.Tensor, steps: int, reverse: bool, save: bool, dtype: torch.dtype) -> torch.Tensor:
    """The state after the last step, as a fresh tensor in ``dtype``."""
    return buf[_slot(0 if reverse else steps, save)].to(dtype, copy=True)


def needs_save(*tensors: torch.Tensor | None) -> bool:
    """Whether a forward must keep what its backward reads: grad mode is on and some input wants a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_saved(save: bool, op: str) -> None:
    if not save:
        raise RuntimeError(f"fastrnn::{op} ran with save=False, so it kept nothing to differentiate")


def carried_grad(grad: torch.Tensor | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A fresh contiguous fp32 copy of an incoming state gradient (zeros when autograd passed None); the
    backward kernel updates it in place from dh_n to dh0."""
    if grad is None:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    out.copy_(grad)
    return out


def prev_states(hs: torch.Tensor, reverse: bool) -> torch.Tensor:
    """[T, B, N] view of the state each step read: hs[t + reverse]."""
    return hs[1:] if reverse else hs[:-1]


def weight_grad(dg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_t dg_t^T x_t as one fp32 GEMM over all steps: [T, B, M], [T, B, N] -> [M, N]."""
    return dg.reshape(-1, dg.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(torch.float32)
