"""The standard grid (shared/BENCHMARKS.md) x providers x modes under pytest-benchmark.

Run: ``pytest bench/ --benchmark-only`` (CUDA only; skipped cleanly without it). Each benchmark first checks
the provider's output, final states and, for fwd+bwd, every gradient against the fp64 torch.nn oracle; a
wrong result fails the test and is never timed. Result CSVs with ratios vs cuDNN come from ``fastrnn bench``.
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device: the benchmarks time GPU kernels", allow_module_level=True)

from fastrnn.apps import bench as harness  # noqa: E402


def _providers(config) -> list[str]:
    text = config.getoption("--fastrnn-providers")
    return [p.strip() for p in text.split(",") if p.strip()] if text else harness.default_providers("cuda")


def pytest_generate_tests(metafunc):
    if "provider" not in metafunc.fixturenames:
        return
    params = [  # (case, dtype) outermost, so consecutive tests share one Problem
        pytest.param(case, dtype, mode, provider, id=f"{case.id}-{dtype}-{mode}-{provider}")
        for case, dtype in harness.select_grid()
        for mode in harness.MODES
        for provider in _providers(metafunc.config)
    ]
    metafunc.parametrize(("case", "dtype", "mode", "provider"), params)


def test_bench(benchmark, problems, request, case, dtype, mode, provider):
    problem = problems(case, dtype)
    try:
        runner = harness.build_runner(provider, problem)
        wrong = harness.check(runner, problem, mode)
    except harness.Unsupported as e:
        pytest.skip(str(e))
    if wrong:
        pytest.fail(f"not timed: {wrong}")
    fn, grads = harness.step_fn(runner, problem, mode)

    def reset():
        for g in grads:
            g.grad = None

    def call():
        fn()
        torch.cuda.synchronize()

    info = benchmark.extra_info
    info.update(bench=case.bench, cell=case.cell, B=case.B, T=case.T, I=case.I, H=case.H, layers=case.layers,
                bidir=case.bidir, dtype=dtype, mode=mode, provider=provider,
                flops=harness.flops(case, mode, problem.tokens), **harness.environment(problem.device))
    if request.config.getoption("--fastrnn-do-bench"):
        info["peak_mb"] = harness.peak_memory_mb(fn, reset)
        p50, p20, p80 = harness.time_cuda(fn, grads, 25, 100)
        info.update(ms_p50=p50, ms_p20=p20, ms_p80=p80, tflops=info["flops"] / (p50 * 1e-3) / 1e12,
                    us_per_step=p50 * 1e3 / case.T)
    rounds = request.config.getoption("--fastrnn-rounds")
    benchmark.pedantic(call, setup=reset, rounds=rounds, warmup_rounds=2, iterations=1)
    reset()
