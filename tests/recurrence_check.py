"""Harness for the Triton recurrence tests: fastrnn.ops.recurrence against fastrnn.reference in fp64.

:func:`check_recurrence` builds random inputs for one direction of one layer, runs the Triton op and the
fp64 reference on the same values, puts the same random upstream gradient on y, h_n and c_n, and compares
the outputs, the final states and the gradients of gx, h0, c0, w_hh, b_hh and w_hr.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from helpers import REL_TOL, assert_close, rel_error

from fastrnn import ops, reference


def triton_device() -> torch.device:
    """Where the Triton op runs in tests: CUDA when present, else the CPU interpreter (conftest sets it)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_lengths(T: int, B: int) -> torch.Tensor:
    """Unequal lengths in [1, T] with a full-length row first and (for B > 1) a length-1 row second."""
    lengths = torch.randint(1, T + 1, (B,), dtype=torch.int64)
    lengths[0] = T
    if B > 1:
        lengths[1] = 1
    return lengths


def make_inputs(
    mode: str,
    T: int,
    B: int,
    H: int,
    proj: int = 0,
    dtype: torch.dtype = torch.float32,
    w_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
    bias: bool = True,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor | None]:
    """Random leaf tensors for :func:`fastrnn.ops.recurrence`: gx and states ~ N(0, 1/4), weights as
    torch.nn initialises them."""
    device = device or triton_device()
    w_dtype = w_dtype or dtype
    state_dtype = state_dtype or dtype
    P = proj or H
    G = reference.GATES[mode] * H
    k = 1 / math.sqrt(H)

    def leaf(shape, dt, bound=None):
        x = torch.randn(shape, dtype=torch.float64) if bound is None else torch.rand(shape, dtype=torch.float64)
        x = x * 0.5 if bound is None else (2 * x - 1) * bound  # weights ~ U(-k, k) as torch.nn initialises them
        return x.to(device=device, dtype=dt).requires_grad_()

    return {
        "gx": leaf((T, B, G), dtype),
        "h0": leaf((B, P), state_dtype),
        "c0": leaf((B, H), state_dtype) if mode == "lstm" else None,
        "w_hh": leaf((G, P), w_dtype, k),
        "b_hh": leaf((G,), w_dtype, k) if mode == "gru" and bias else None,
        "w_hr": leaf((P, H), w_dtype, k) if mode == "lstm" and proj else None,
    }


def check_recurrence(
    mode: str,
    T: int = 5,
    B: int = 3,
    H: int = 20,
    proj: int = 0,
    lengths: torch.Tensor | None = None,
    reverse: bool = False,
    dtype: torch.dtype = torch.float32,
    w_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
    bias: bool = True,
    backward: bool = True,
    scale: float = 1.0,
    before_backward: Callable[[], None] | None = None,
) -> None:
    """Compare fastrnn.ops.recurrence with the fp64 reference on one random problem (see module docstring).

    Every quantity is compared under the tolerance of gx's dtype (the precision the recurrence runs at, also
    for fp32 states and weights beside fp16 gx) times ``scale``. ``before_backward`` runs after the forward
    has been checked (e.g. to break only the backward kernels).
    """
    inputs = make_inputs(mode, T, B, H, proj, dtype, w_dtype, state_dtype, bias)
    ref_inputs = {n: None if x is None else x.detach().cpu().double().requires_grad_() for n, x in inputs.items()}
    launches = sum(ops.launch_counts.values())
    out = ops.recurrence(mode, **inputs, lengths=lengths, reverse=reverse)
    ref = reference.recurrence(mode, **ref_inputs, lengths=lengths, reverse=reverse)
    assert sum(ops.launch_counts.values()) > launches, "the Triton kernels did not run"
    assert (out[2] is None) == (mode != "lstm")
    for name, r, o in zip(("y", "h_n", "c_n"), ref, out, strict=True):
        if o is not None:
            assert o.dtype == dtype, f"{name}: dtype {o.dtype} != gx dtype {dtype}"
        assert_close(name, r, o, dtype=dtype, scale=scale)
    if not backward:
        return
    ups = [None if o is None else torch.randn(o.shape, dtype=torch.float64).to(o.dtype) for o in out]
    loss = sum((o.double() * u.to(o.device).double()).sum() for o, u in zip(out, ups, strict=True) if o is not None)
    ref_loss = sum((r * u.double()).sum() for r, u in zip(ref, ups, strict=True) if r is not None)
    if before_backward is not None:
        before_backward()
    loss.backward()
    ref_loss.backward()
    for name, x in inputs.items():
        if x is None:
            continue
        assert x.grad is not None, f"d{name}: no gradient"
        assert x.grad.dtype == x.dtype, f"d{name}: dtype {x.grad.dtype} != {name} dtype {x.dtype}"
        assert_close(f"d{name}", ref_inputs[name].grad, x.grad, dtype=dtype, scale=scale)


def check_large(
    mode: str,
    T: int,
    B: int,
    H: int,
    dtype: torch.dtype,
    proj: int = 0,
    reverse: bool = False,
    tol: float | None = None,
):
    """GPU-sized check: relative error of every output and gradient against the fp64 reference (run on the
    same device), with unequal lengths, under ``tol`` (default :data:`REL_TOL` of the dtype)."""
    inputs = make_inputs(mode, T, B, H, proj, dtype)
    lengths = make_lengths(T, B)
    ref_inputs = {n: None if x is None else x.detach().double().requires_grad_() for n, x in inputs.items()}
    out = ops.recurrence(mode, **inputs, lengths=lengths, reverse=reverse)
    ref = reference.recurrence(mode, **ref_inputs, lengths=lengths, reverse=reverse)
    ups = [None if r is None else torch.randn_like(r) for r in ref]
    sum((o.double() * u).sum() for o, u in zip(out, ups, strict=True) if o is not None).backward()
    sum((r * u).sum() for r, u in zip(ref, ups, strict=True) if r is not None).backward()
    tol = tol or REL_TOL[dtype]
    # relu' jumps at 0: low-precision matmul operands flip it on pre-activations within rounding of 0, which
    # moves gradients by whole dh entries (a ~1e-2 relative effect for fp16, inherent to the precision).
    grad_tol = tol * 4 if mode == "rnn_relu" and dtype != torch.float32 else tol
    errors = {name: rel_error(r, o) for name, r, o in zip(("y", "h_n", "c_n"), ref, out, strict=True) if o is not None}
    bad = {n: f"{e:.2e}" for n, e in errors.items() if not e < tol}
    grad_errors = {f"d{n}": rel_error(ref_inputs[n].grad, x.grad) for n, x in inputs.items() if x is not None}
    bad.update({n: f"{e:.2e}" for n, e in grad_errors.items() if not e < grad_tol})
    assert not bad, f"relative error above {tol:g} (gradients {grad_tol:g}): {bad}"
