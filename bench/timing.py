"""What is timed and how: the step function of a mode, the CUDA and CPU timers, peak memory.

GPU: ``triton.testing.do_bench`` (CUDA events, quantiles 0.5 / 0.2 / 0.8, ``grad_to_none``). do_bench calls the
function at least 8 times (1 + 5 to estimate, then warm-up and repetitions), which costs ~10 s for a call that
takes over a second; such a call (one call > ``slow_ms``, default 200 ms) is timed instead by
:data:`SLOW_CALLS` calls between CUDA events, and its row says so in ``note``.
Peak memory: ``torch.cuda.max_memory_allocated()`` during that first timed call (the gate's call before it
compiled and warmed up everything) minus what was allocated before it.
CPU (``--device cpu``): ``time.perf_counter``, for smoke runs of the plumbing only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from bench.problem import Problem
from bench.providers import Runner

QUANTILES = (0.5, 0.2, 0.8)
#: a GPU call slower than this (ms) is timed by SLOW_CALLS calls instead of do_bench
SLOW_MS = 200.0
SLOW_CALLS = 3


def step_fn(runner: Runner, problem: Problem, mode: str) -> tuple[Callable[[], None], list[Tensor]]:
    """The function to time for ``mode``, and the tensors whose grads to reset between calls.

    ``fwd``: the forward under ``torch.no_grad()``. ``fwd+bwd``: the forward, then the backward of the
    problem's random upstream gradients on the output and the final states.
    """
    if mode == "fwd":
        def run():
            with torch.no_grad(), runner.context():
                runner.forward()
    elif mode == "fwd+bwd":
        def run():
            with runner.context():
                out, states = runner.forward()
                torch.autograd.backward([out, *states], [problem.grad_out, *problem.grad_states])
    else:
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    return run, [problem.x, *runner.params.values()]


class PeakMemory:
    """``with meter():`` measures the peak CUDA memory allocated inside the block above what was allocated
    when it began, in MiB (``mb``; None off CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.mb: float | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self.cuda:
            yield
            return
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield
        torch.cuda.synchronize()
        self.mb = (torch.cuda.max_memory_allocated() - base) / 2**20


def _reset(grads: list[Tensor]) -> None:
    for g in grads:
        g.grad = None


def _quantiles(samples: list[float]) -> tuple[float, float, float]:
    q = torch.tensor(samples, dtype=torch.float64).quantile(torch.tensor(QUANTILES, dtype=torch.float64))
    return tuple(float(v) for v in q)


def _event_ms(fn: Callable[[], None], grads: list[Tensor]) -> float:
    _reset(grads)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def time_cuda(fn: Callable[[], None], grads: list[Tensor], warmup: float, rep: float, slow_ms: float = SLOW_MS,
              meter: PeakMemory | None = None) -> tuple[tuple[float, float, float], str]:
    """((ms_p50, ms_p20, ms_p80), note): do_bench, or SLOW_CALLS event-timed calls for a call over ``slow_ms``.

    The first call (which decides between the two) runs inside ``meter``, so peak memory costs no extra call.
    """
    with meter() if meter is not None else contextlib.nullcontext():
        first = _event_ms(fn, grads)
    if first > slow_ms:
        samples = [first] + [_event_ms(fn, grads) for _ in range(SLOW_CALLS - 1)]
        _reset(grads)
        return _quantiles(samples), (f"timed by {SLOW_CALLS} calls between CUDA events "
                                     f"(one call {first:.0f} ms > {slow_ms:g} ms)")
    from triton.testing import do_bench

    q = do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grads, quantiles=list(QUANTILES))
    _reset(grads)
    return tuple(float(v) for v in q), ""


def time_cpu(fn: Callable[[], None], grads: list[Tensor], warmup: float, rep: float,
             max_runs: int = 1000) -> tuple[tuple[float, float, float], str]:
    """((ms_p50, ms_p20, ms_p80), note) by time.perf_counter: the CPU smoke-run timer (at least 3 timed runs)."""
    end = time.perf_counter() + warmup / 1e3
    _reset(grads)
    fn()
    while time.perf_counter() < end:
        _reset(grads)
        fn()
    samples: list[float] = []
    end = time.perf_counter() + rep / 1e3
    while (len(samples) < 3 or time.perf_counter() < end) and len(samples) < max_runs:
        _reset(grads)
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    _reset(grads)
    return _quantiles(samples), ""
