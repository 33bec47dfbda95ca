"""GPU correctness smoke: every cell and both Triton strategies, forward and backward, against the fp64 reference.

The first stage of ``bench/gpu_session.sh`` (limit 90 s): before anything is timed, every cell (lstm, gru,
rnn_tanh, rnn_relu) under ``tiled`` and ``persistent`` at a small shape (tight per-element tolerances, unequal
lengths), then LSTM, GRU and RNN at the headline shape B=16 T=1024 H=768 in fp16 and bf16 (relative error of
every output and gradient, unequal lengths). Each test prints the kernels it launched, and fails if a kernel of
the other strategy ran. Run with ``-x -rA`` (and ``-v``) so a run cut short still says what passed:

    pytest tests/test_gpu_smoke.py -x -rA -v

Skipped without CUDA, like every gpu-marked test (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from recurrence_check import check_large, check_recurrence, make_lengths

from fastrnn import ops
from fastrnn.reference import MODES

pytestmark = pytest.mark.gpu

STRATEGIES = ("tiled", "persistent")
HEADLINE = dict(T=1024, B=16, H=768)
HEADLINE_CELLS = ("lstm", "gru", "rnn_tanh")


def _run_under(strategy: str, body) -> None:
    """Run ``body`` under ``strategy``; check that Triton kernels of that strategy, and only those, launched."""
    before = dict(ops.launch_counts)
    with ops.use_strategy(strategy):
        body()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    launched = {k: v - before.get(k, 0) for k, v in ops.launch_counts.items() if v != before.get(k, 0)}
    print(f"{strategy}: kernels launched {launched}")
    assert launched, "no Triton kernel ran"
    persistent = {k for k in launched if "persistent" in k}
    if strategy == "persistent":
        assert persistent == set(launched), f"non-persistent kernels ran: {sorted(set(launched) - persistent)}"
    else:
        assert not persistent, f"persistent kernels ran under {strategy}: {sorted(persistent)}"


@pytest.mark.parametrize(("mode", "strategy"), [(m, s) for s in STRATEGIES for m in MODES])
def test_small(mode, strategy):
    T, B = 7, 3
    lengths = make_lengths(T, B)
    _run_under(strategy, lambda: check_recurrence(mode, T, B, 20, lengths=lengths, reverse=mode in ("gru",
                                                                                                     "rnn_relu")))


@pytest.mark.parametrize(("mode", "dtype", "strategy"),
                         [(m, d, s) for m in HEADLINE_CELLS for d in (torch.float16, torch.bfloat16)
                          for s in STRATEGIES], ids=str)
def test_headline(mode, dtype, strategy):
    _run_under(strategy, lambda: check_large(mode, HEADLINE["T"], HEADLINE["B"], HEADLINE["H"], dtype))
