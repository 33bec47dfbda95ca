"""The standard grid x providers x modes under pytest-benchmark (regression tracking, --benchmark-compare).

Run: ``pytest bench/ --benchmark-only`` (CUDA only; skipped cleanly without it). Each benchmark first passes the
harness's correctness gate (output, final states and, for fwd+bwd, every gradient against the fp64 reference); a
wrong result fails the test and is never timed. Result CSVs with ratios vs cuDNN come from ``python -m bench``.
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device: the benchmarks time GPU kernels", allow_module_level=True)

from bench import gate, timing  # noqa: E402
from bench.grid import MODES, flops, select_grid  # noqa: E402
from bench.providers import Unsupported, build_runner, default_providers  # noqa: E402
from bench.results import environment  # noqa: E402


def _providers(config) -> list[str]:
    text = config.getoption("--fastrnn-providers")
    return [p.strip() for p in text.split(",") if p.strip()] if text else default_providers("cuda")


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames:
        return
    params = [  # (case, dtype) outermost, so consecutive tests share one Problem
        pytest.param(case, dtype, mode, provider, id=f"{case.id}-{dtype}-{mode}-{provider}")
        for case, dtype in select_grid()
        for mode in MODES
        for provider in _providers(metafunc.config)
    ]
    metafunc.parametrize(("case", "dtype", "mode", "provider"), params)


def test_bench(benchmark, problems, request, case, dtype, mode, provider):
    problem = problems(case, dtype)
    try:
        runner = build_runner(provider, problem)
        wrong = gate.check(runner, problem, mode)
    except Unsupported as e:
        pytest.skip(str(e))
    if wrong:
        pytest.fail(f"not timed: {wrong}")
    fn, grads = timing.step_fn(runner, problem, mode)

    def reset():
        for g in grads:
            g.grad = None

    def call():
        fn()
        torch.cuda.synchronize()

    info = benchmark.extra_info
    info.update(bench=case.bench, cell=case.cell, B=case.B, T=case.T, I=case.I, H=case.H, layers=case.layers,
                bidir=case.bidir, dtype=dtype, mode=mode, provider=provider,
                flops=flops(case, mode, problem.tokens), **environment(problem.device))
    if request.config.getoption("--fastrnn-do-bench"):
        meter = timing.PeakMemory(problem.device)
        (p50, p20, p80), note = timing.time_cuda(fn, grads, 25, 100, meter=meter)
        info.update(ms_p50=p50, ms_p20=p20, ms_p80=p80, peak_mb=meter.mb, note=note,
                    tflops=info["flops"] / (p50 * 1e-3) / 1e12, us_per_step=p50 * 1e3 / case.T)
    rounds = request.config.getoption("--fastrnn-rounds")
    benchmark.pedantic(call, setup=reset, rounds=rounds, warmup_rounds=2, iterations=1)
    reset()
