"""The input projection x W_ih^T + b of the ``triton`` backend, on torch's GEMMs with cuDNN's fp32 precision.

cuDNN's RNNs run every fp32 matmul, the input projection's included, on TF32 tensor cores when
``torch.backends.cudnn.allow_tf32`` is set (torch's default); torch's own fp32 matmuls follow a different
switch, ``torch.backends.cuda.matmul.allow_tf32`` (off by default). So that fastrnn's fp32 recurrences keep
nn.LSTM's contract, their input projection and its gradients run with TF32 exactly when cuDNN's would
(:func:`linear`); where that does not apply (not CUDA, not fp32, autocast, torch.compile tracing, or the switch
off) it is a plain ``F.linear``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


@contextlib.contextmanager
def tf32_matmuls() -> Iterator[None]:
    """torch's CUDA fp32 matmuls on TF32 inside the block (the previous setting is restored after it)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class TF32Linear(torch.autograd.Function):
    """F.linear whose forward and backward GEMMs run on TF32 (x [..., I], w [G, I], b [G] or None)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        with tf32_matmuls():
            return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        dx = dw = db = None
        with tf32_matmuls():
            if ctx.needs_input_grad[0]:
                dx = grad @ w
            if ctx.needs_input_grad[1]:
                dw = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.reshape(-1, grad.shape[-1]).sum(0)
        return dx, dw, db


def uses_tf32(x: Tensor, w: Tensor) -> bool:
    """Whether :func:`linear` runs on TF32 for these operands: CUDA fp32, ``cudnn.allow_tf32``, no autocast, not
    while torch.compile traces (there it stays F.linear, which the compiler sees through)."""
    return (
        x.is_cuda
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and torch.backends.cudnn.allow_tf32
        and not torch.is_autocast_enabled()
        and not torch.compiler.is_compiling()
    )


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x @ w^T + b with cuDNN's fp32 precision (see the module docstring)."""
    if uses_tf32(x, w):
        return TF32Linear.apply(x, w, b)
    return F.linear(x, w, b)
