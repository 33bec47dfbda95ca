"""The correctness gate: a provider's result is compared with the fp64 oracle before it is timed.

Compared: the output and final states, and for fwd+bwd the input gradient and the gradient of every parameter
the provider exposes, each by relative L2 error ``||out - oracle|| / ||oracle||`` against :data:`TOLERANCE` of
the dtype. A provider over the limit is never timed (its row says ``wrong`` and why).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bench.problem import Problem
from bench.providers import Runner

#: largest relative L2 error accepted per dtype, for the output, the final states and every gradient. fp32
#: allows for TF32 GEMMs (cuDNN uses them by default); a broken kernel is off by O(1).
TOLERANCE = {"fp32": 1e-2, "fp16": 2e-2, "bf16": 5e-2}


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; inf when ``out`` holds a NaN or inf."""
    out, ref = out.detach().double().to(ref.device), ref.detach().double()
    if not torch.isfinite(out).all():
        return math.inf
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


def clear_grads(problem: Problem, runner: Runner) -> None:
    problem.x.grad = None
    for p in runner.params.values():
        p.grad = None


def check(runner: Runner, problem: Problem, mode: str) -> str | None:
    """Run ``runner`` once in ``mode`` and compare with the oracle; None when correct, else what is wrong."""
    grads = mode == "fwd+bwd"
    ref = problem.oracle(grads)
    clear_grads(problem, runner)
    with torch.set_grad_enabled(grads), runner.context():
        out, states = runner.forward()
        if grads:
            torch.autograd.backward([out, *states], [problem.grad_out, *problem.grad_states])
    got = {"output": out, "h_n": states[0]}
    if problem.lstm:
        got["c_n"] = states[1] if len(states) > 1 else None
    if grads:
        got["grad:input"] = problem.x.grad
        got.update({f"grad:{name}": p.grad for name, p in runner.params.items()})
    tol = TOLERANCE[problem.dtype_name]
    problems = []
    for name, value in got.items():
        if name not in ref:
            problems.append(f"{name}: not in the oracle")
        elif value is None:
            problems.append(f"{name}: missing")
        elif tuple(value.shape) != tuple(ref[name].shape):
            problems.append(f"{name}: shape {tuple(value.shape)} != {tuple(ref[name].shape)}")
        else:
            err = relative_error(value, ref[name])
            if not err <= tol:
                problems.append(f"{name}: rel L2 err {err:.2e} > {tol:.0e}")
    clear_grads(problem, runner)
    if problems:
        return f"wrong result vs the fp64 reference ({mode}, {problem.dtype_name}): " + "; ".join(problems)
    return None
