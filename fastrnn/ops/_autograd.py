"""The autograd plumbing every cell's op shares: what the forward saves and how the backward op is called.

A cell registers its forward op ``fastrnn::<cell>`` and backward op ``fastrnn::<cell>_backward`` with
:func:`register`. The forward op returns its state outputs (y, h_n[, c_n]) followed by the buffers its backward
reads; the backward op takes the gradients of the state outputs (zeros where autograd has none), those
buffers, and the forward arguments named in ``passes``, and returns the gradients of the forward arguments
named in ``grads`` (gx in gx's dtype, the rest in fp32), which come back to autograd in each argument's own
dtype (None where the argument is None).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastrnn.ops import _launch as L


def register(op, backward_op, *, states: int, grads: Sequence[str], passes: Sequence[str]) -> None:
    """Register autograd for custom op ``op`` through ``backward_op`` (see the module docstring)."""
    names = [a.name for a in op._opoverload._schema.arguments]
    tensor_passes = [n for n in passes if n in names and _is_tensor_arg(op, n)]

    def setup_context(ctx, inputs, output):
        args = dict(zip(names, inputs, strict=True))
        ctx.save_for_backward(*output[states:], *(args[n] for n in tensor_passes))
        ctx.n_buffers = len(output) - states
        ctx.passes = {n: args[n] for n in passes if n not in tensor_passes}
        ctx.state_meta = [(o.shape, o.dtype, o.device) for o in output[:states]]
        ctx.grad_meta = [(None if args[n] is None else args[n].dtype) for n in grads]
        ctx.saved = args.get("save", True)

    def backward(ctx, *out_grads):
        L.check_saved(ctx.saved, op._name.split("::")[-1])
        saved = ctx.saved_tensors
        buffers, tensors = saved[: ctx.n_buffers], dict(zip(tensor_passes, saved[ctx.n_buffers :], strict=True))
        state_grads = [
            torch.zeros(shape, dtype=dtype, device=device) if g is None else g
            for g, (shape, dtype, device) in zip(out_grads[:states], ctx.state_meta, strict=True)
        ]
        passed = [tensors[n] if n in tensors else ctx.passes[n] for n in passes]
        results = backward_op(*state_grads, *buffers, *passed)
        by_name = {
            n: None if dtype is None else g.to(dtype) for n, g, dtype in zip(grads, results, ctx.grad_meta, strict=True)
        }
        return tuple(by_name.get(n) for n in names)

    op.register_autograd(backward, setup_context=setup_context)


def _is_tensor_arg(op, name: str) -> bool:
    for a in op._opoverload._schema.arguments:
        if a.name == name:
            return "Tensor" in str(a.type)
    raise KeyError(name)
