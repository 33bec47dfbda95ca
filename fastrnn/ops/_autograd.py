"""The autograd plumbing every cell's op shares: what the forward saves and how the backward op is called.

A cell registers its forward op ``fastrnn::<cell>`` and backward op ``fastrnn::<cell>_backward`` with
:func:`register`. The forward op returns its state outputs (y, h_n[, c_n]) followed by the buffers its backward
reads; the backward op takes the gradients of the state outputs (zeros where autograd has none), those
buffers, and the forward arguments named in ``passes``, and returns the gradients of the forward arguments
named in ``grads`` (gx in gx's dtype, the rest in fp32), which come back to autograd in each argument's own
dtype (None where the argument is None).

A backward that autograd runs to build a graph (``create_graph=True``) recomputes instead
(:mod:`fastrnn.ops._second_order`): the forward also keeps its inputs gx, h0 and c0 or b_hh for it (unless
``$FASTRNN_DOUBLE_BACKWARD=0``), and ``mode`` names the recurrence an argument dict describes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fastrnn.ops import _launch as L
from fastrnn.ops import _second_order

#: the recurrence inputs (fastrnn.reference.recurrence's names) a create_graph backward recomputes from
RECOMPUTE_ARGS = ("gx", "h0", "c0", "w_hh", "b_hh", "w_hr", "lengths", "reverse")


def register(
    op,
    backward_op,
    *,
    states: int,
    grads: Sequence[str],
    passes: Sequence[str],
    mode: Callable[[dict], str],
) -> None:
    """Register autograd for custom op ``op`` through ``backward_op`` (see the module docstring)."""
    names = [a.name for a in op._opoverload._schema.arguments]
    tensor_passes = [n for n in passes if n in names and _is_tensor_arg(op, n)]
    extra = [n for n in ("gx", "h0", "c0", "b_hh") if n in names]  # what only a recompute needs

    def setup_context(ctx, inputs, output):
        args = dict(zip(names, inputs, strict=True))
        kept = _second_order.to_save(*(args[n] for n in extra))
        ctx.save_for_backward(*output[states:], *(args[n] for n in tensor_passes), *kept)
        ctx.n_buffers = len(output) - states
        ctx.passes = {n: args[n] for n in passes if n not in tensor_passes}
        ctx.state_meta = [(o.shape, o.dtype, o.device) for o in output[:states]]
        ctx.grad_meta = [(None if args[n] is None else args[n].dtype) for n in grads]
        ctx.saved = args.get("save", True)
        ctx.mode = mode(args)

    def backward(ctx, *out_grads):
        L.check_saved(ctx.saved, op._name.split("::")[-1])
        saved = ctx.saved_tensors
        n_passed = ctx.n_buffers + len(tensor_passes)
        buffers = saved[: ctx.n_buffers]
        tensors = dict(zip(tensor_passes, saved[ctx.n_buffers : n_passed], strict=True))
        kept = saved[n_passed:]
        if _second_order.active(kept):  # create_graph=True: a differentiable recompute, not the kernels
            args = {**dict(zip(extra, kept, strict=True)), **tensors, **ctx.passes}
            results = _second_order.backward(
                ctx.mode, *(args.get(n) for n in RECOMPUTE_ARGS), *out_grads[:states], *([None] * (3 - states))
            )
            by_name = dict(zip(("gx", "h0", "c0", "w_hh", "b_hh", "w_hr"), results, strict=True))
            return tuple(by_name.get(n) for n in names)
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
