"""What every cell's launcher shares: device checks, dtypes, buffers, the weight-gradient GEMM and the launch
counter."""

from __future__ import annotations

import collections

import torch
import triton
import triton.language as tl

from fastrnn.backend import interpreting

#: Kernel launches per kernel name, incremented by every launcher (tests use it to prove the Triton path ran).
launch_counts: collections.Counter[str] = collections.Counter()

#: Tile of the weight-gradient GEMM: [BM, BK] outputs per program, BR rows of the reduction per step.
WEIGHT_GRAD_BLOCKS = {"BM": 64, "BK": 64, "BR": 32}

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"fastrnn.ops runs on CUDA tensors, got a tensor on {t.device.type!r}; "
            "set TRITON_INTERPRET=1 to run the Triton kernels on CPU"
        )


def matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent matmuls read their operands in: fp16/bf16 stay (tensor cores, fp32 accumulate),
    everything else runs in fp32 (TF32 or exact products: fastrnn.ops.strategy.precision)."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


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


def exchange_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, init=None) -> torch.Tensor:
    """[2, *shape] buffer through which the programs of a launch exchange a state in ``dtype``; ``init`` goes into
    slot 1, the one the first step reads (kernels/common.py)."""
    buf = torch.empty((2, *shape), dtype=dtype, device=device)
    if init is not None:
        buf[1].copy_(init)
    return buf


def partials_buffer(n_tiles: int, B: int, P: int, device: torch.device) -> torch.Tensor:
    """fp32 [2, n_tiles, B, P] buffer of the backward's partials of dh_{t-1}; slot 1 (read by the first step) is
    zero."""
    buf = torch.empty((2, n_tiles, B, P), dtype=torch.float32, device=device)
    buf[1].zero_()
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


def weight_grad(g: torch.Tensor, x: torch.Tensor, mm_dtype: torch.dtype, prec: int) -> torch.Tensor:
    """sum_t g_t^T x_t as one GEMM over all steps (kernels/common.py weight_grad_kernel): fp32 [T, B, M] and
    [T, B, K] -> fp32 [M, K], on tensor cores in ``mm_dtype`` with precision ``prec`` (strategy.precision)."""
    from fastrnn.kernels.common import weight_grad_kernel

    M, K = g.shape[-1], x.shape[-1]
    g2 = g.reshape(-1, M)
    x2 = x.reshape(-1, K)
    out = torch.empty((M, K), dtype=torch.float32, device=g.device)
    if g2.shape[0] == 0:
        return out.zero_()
    blocks = WEIGHT_GRAD_BLOCKS
    grid = (triton.cdiv(M, blocks["BM"]), triton.cdiv(K, blocks["BK"]))
    weight_grad_kernel[grid](
        g2, x2.contiguous(), out, g2.shape[0], M, K, **blocks, PREC=prec, MM_DTYPE=_TL_DTYPES[mm_dtype]
    )
    return out
