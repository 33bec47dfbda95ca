"""Persistent whole-sequence kernels (fastrnn.ops.strategy 'persistent') against the fp64 reference, and the
strategy layer that plans them.

On CPU the persistent grids run inside :func:`fastrnn.testing.concurrent_interpreter`, which runs a launch's
programs as threads, so the per-program flags that order the steps work as on a GPU: every cell, forward and
backward, lengths, reverse, proj_size, fp16/bf16, hidden splits with one tile per program (resident weights)
and with several (streamed), batch groups and batch tiles per program, 2 to 8 programs. The programs take
turns, each running as far ahead as its waits let it, so a program that does not wait reads what was not yet
written: the tests fail with a broken wait (checked below, forward and backward, every time), and a flag that is
never raised is a deadlock. The gpu-marked tests run real grids at realistic sizes.
"""

from __future__ import annotations

import time

import pytest
import torch
import triton
import triton.language as tl
from fastrnn.kernels import common as common_kernels
from helpers import assert_close
from recurrence_check import check_large, check_recurrence, make_inputs, make_lengths, triton_device

from fastrnn import ops, reference, testing
from fastrnn.ops import _launch, strategy

MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]

needs_interpreter = pytest.mark.skipif(not _launch.interpreting(), reason="runs Triton's interpreter")


@pytest.fixture
def programs(monkeypatch):
    """Run the test body's recurrences as persistent grids of up to ``programs(n)`` programs in the concurrent
    interpreter (CPU) or on the GPU, and return the names of the kernels that ran."""

    def use(n: int | None = None, resident: bool | None = None):
        if n is not None:
            monkeypatch.setenv(strategy.PROGRAMS_ENV_VAR, str(n))
        if resident is not None:
            monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "1" if resident else "0")
        ops.launch_counts.clear()

    with ops.use_strategy("persistent"):
        if _launch.interpreting():
            with testing.concurrent_interpreter(timeout=300):
                yield use
        else:
            yield use
    assert ops.launch_counts, "no kernel ran"
    assert all("_persistent" in name for name in ops.launch_counts), dict(ops.launch_counts)


def _ran(suffix: str) -> None:
    assert ops.launch_counts and all(n.endswith(suffix) for n in ops.launch_counts), dict(ops.launch_counts)


@needs_interpreter
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("mode", MODES)
def test_multi_program_cells(programs, mode, n):
    """H = 40: three 16-unit tiles, so 2 programs own several tiles (streamed weights) and 4 programs one each
    (resident); unequal lengths, both directions."""
    programs(n)
    T, B = 4, 3
    check_recurrence(mode, T, B, 40, lengths=make_lengths(T, B), reverse=n == 2)
    _ran("_persistent" if n == 2 else "_persistent_resident")


@needs_interpreter
@pytest.mark.parametrize(("H", "proj", "n", "reverse"), [(40, 13, 4, False), (40, 24, 2, True), (20, 7, 8, True)])
def test_multi_program_lstm_proj(programs, H, proj, n, reverse):
    """proj_size: a second phase per step (m_t, then h_t; backward dL/dh_t, then the gates)."""
    programs(n)
    T, B = 3, 3
    check_recurrence("lstm", T, B, H, proj=proj, lengths=make_lengths(T, B), reverse=reverse)


@needs_interpreter
@pytest.mark.parametrize(("mode", "n"), [("lstm", 8), ("gru", 4), ("rnn_tanh", 6)])
def test_batch_groups(programs, monkeypatch, mode, n):
    """16-column batch tiles over B = 40 (three) and H = 20 (two unit tiles): 8 programs make 2 hidden slices x
    3 batch groups, 6 programs 2 x 3, 4 programs 2 x 2 with the first group owning two batch tiles."""
    monkeypatch.setattr(strategy, "MAX_BLOCK_N", 16)
    programs(n)
    grid = strategy.persistent_grid(mode, 40, 20, 20, torch.float32, triton_device())
    assert grid.groups > 1 and grid.block_n == 16
    check_recurrence(mode, 3, 40, 20, lengths=make_lengths(3, 40), reverse=mode == "gru")


@needs_interpreter
@pytest.mark.parametrize(("mode", "T", "B", "H"), [("lstm", 1, 1, 5), ("gru", 5, 2, 50), ("rnn_relu", 2, 17, 33)])
def test_awkward_sizes(programs, mode, T, B, H):
    """T = 1, B = 1, H not a multiple of the tile (masked units), B not a multiple of 16."""
    programs(3)
    check_recurrence(mode, T, B, H)


@needs_interpreter
@pytest.mark.parametrize(("mode", "dtype"), [("lstm", torch.float16), ("gru", torch.bfloat16)], ids=str)
def test_low_precision(programs, mode, dtype):
    programs(4)
    T, B = 4, 3
    check_recurrence(mode, T, B, 40, proj=9 if mode == "lstm" else 0, lengths=make_lengths(T, B), dtype=dtype)


@needs_interpreter
@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streaming"])
def test_inference_ping_pong(programs, resident):
    """Without a gradient the forward keeps two state slots and no gates; the exchange slots alternate."""
    programs(4, resident=resident)
    x = {n: None if v is None else v.detach() for n, v in make_inputs("lstm", 6, 3, 40).items()}
    lengths = make_lengths(6, 3)
    out = ops.recurrence("lstm", **x, lengths=lengths)
    ref = reference.recurrence("lstm", **{n: None if v is None else v.double() for n, v in x.items()}, lengths=lengths)
    for name, a, b in zip(("y", "h_n", "c_n"), out, ref, strict=True):
        assert_close(name, b, a)
    _ran("_persistent_resident" if resident else "_persistent")


# --- the flags are what make it right ---------------------------------------------------------------------


@triton.jit
def _wait_for_nothing(flags, n, target, NF: tl.constexpr):
    tl.debug_barrier()


@triton.jit
def _publish_nothing(flag, value, PERSISTENT: tl.constexpr):
    tl.debug_barrier()


def _no_waits(monkeypatch):
    monkeypatch.setattr(common_kernels, "wait_for", _wait_for_nothing)


@needs_interpreter
@pytest.mark.parametrize(("mode", "proj", "n"), [("lstm", 0, 3), ("gru", 0, 2), ("rnn_tanh", 0, 4), ("lstm", 9, 4)])
@pytest.mark.parametrize("broken", ["forward", "backward"])
def test_a_missing_wait_fails(programs, monkeypatch, mode, proj, n, broken):
    """With the waits gone (no tile waits for the other programs' flags), program 0 runs every step before the
    others start and reads states nobody wrote yet: the comparison with the reference fails, every time (the
    schedule is deterministic). Breaking only the backward's waits fails its gradients."""
    programs(n)
    lengths = make_lengths(4, 3)
    if broken == "forward":
        _no_waits(monkeypatch)
        with pytest.raises(AssertionError, match="^(y|h_n|c_n):"):
            check_recurrence(mode, 4, 3, 40, proj=proj, lengths=lengths, backward=False)
    else:
        with pytest.raises(AssertionError, match="^d(gx|h0|c0|w_hh|b_hh|w_hr):"):
            check_recurrence(mode, 4, 3, 40, proj=proj, lengths=lengths, before_backward=lambda: _no_waits(monkeypatch))


@needs_interpreter
def test_a_flag_never_raised_deadlocks(monkeypatch):
    """With the flags never raised every program waits forever: the schedule sees that nobody progresses and
    the launch raises at once, long before its timeout."""
    monkeypatch.setattr(common_kernels, "publish", _publish_nothing)
    monkeypatch.setenv(strategy.PROGRAMS_ENV_VAR, "2")
    x = {n: None if v is None else v.detach() for n, v in make_inputs("gru", 3, 2, 40).items()}
    start = time.monotonic()
    with testing.concurrent_interpreter(timeout=60), ops.use_strategy("persistent"):
        with pytest.raises(Exception, match="all 2 programs wait for a flag nobody raises"):
            ops.recurrence("gru", **x)
    assert time.monotonic() - start < 30


@needs_interpreter
def test_a_spin_without_atomics_times_out():
    """A program that spins without atomics (the schedule cannot see it) is stopped at the launch's timeout."""

    @triton.jit
    def spin(x_ptr):
        v = tl.load(x_ptr)
        while v == 0:
            v = tl.load(x_ptr)

    x = torch.zeros(1, dtype=torch.int32)
    with testing.concurrent_interpreter(timeout=1):
        with pytest.raises(Exception, match="still running after 1 s"):
            spin[(2,)](x)


# --- the strategy layer ------------------------------------------------------------------------------------


def _run_lstm():
    ops.launch_counts.clear()
    x = make_inputs("lstm", 3, 2, 5)
    y, h_n, c_n = ops.recurrence("lstm", **x)
    (y.sum() + h_n.sum() + c_n.sum()).backward()
    return dict(ops.launch_counts)


@needs_interpreter
def test_requests(monkeypatch):
    """auto is tiled under the plain interpreter; the environment and use_strategy (innermost wins) request a
    strategy; a persistent grid of one program runs the persistent kernels there."""
    monkeypatch.delenv(strategy.ENV_VAR, raising=False)
    monkeypatch.delenv(strategy.PROGRAMS_ENV_VAR, raising=False)
    assert strategy.requested() == "auto"
    assert _run_lstm() == {"lstm_fwd": 1, "lstm_bwd": 1}
    monkeypatch.setenv(strategy.ENV_VAR, "persistent")
    assert _run_lstm() == {"lstm_fwd_persistent_resident": 1, "lstm_bwd_persistent_resident": 1}
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "0")
    assert _run_lstm() == {"lstm_fwd_persistent": 1, "lstm_bwd_persistent": 1}
    with ops.use_strategy("tiled"):
        assert _run_lstm() == {"lstm_fwd": 1, "lstm_bwd": 1}
    monkeypatch.setenv(strategy.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=strategy.ENV_VAR):
        _run_lstm()
    with pytest.raises(ValueError, match="strategy"), ops.use_strategy("fastest"):
        pass


@needs_interpreter
def test_auto_is_persistent_in_the_concurrent_interpreter(monkeypatch):
    monkeypatch.delenv(strategy.ENV_VAR, raising=False)
    monkeypatch.setenv(strategy.PROGRAMS_ENV_VAR, "2")
    with testing.concurrent_interpreter():
        assert _run_lstm() == {"lstm_fwd_persistent_resident": 1, "lstm_bwd_persistent_resident": 1}


def _on_a_gpu(monkeypatch, sms=132, cap=None):
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(strategy, "max_programs", lambda device: min(sms, cap or sms))
    monkeypatch.delenv(strategy.RESIDENT_ENV_VAR, raising=False)


@pytest.mark.parametrize(
    ("mode", "B", "H", "P", "dtype", "expected"),
    [
        # (n_h, groups, block_u, block_n, resident): hidden split first, then the batch over the leftover programs
        ("lstm", 16, 768, 768, torch.float16, (48, 1, 16, 16, True)),  # the headline shape
        ("lstm", 64, 512, 512, torch.float32, (32, 4, 16, 16, True)),
        ("lstm", 256, 1024, 1024, torch.bfloat16, (64, 2, 16, 64, True)),  # two 64-column tiles per group
        ("lstm", 1, 1024, 1024, torch.float32, (128, 1, 8, 16, True)),  # 256 KB at 16 units: 8-unit tiles
        ("gru", 16, 768, 768, torch.bfloat16, (48, 1, 16, 16, True)),
        ("rnn_tanh", 8, 1024, 1024, torch.float32, (64, 1, 16, 16, True)),  # B fits one tile
        ("lstm", 16, 4096, 4096, torch.float16, (132, 1, 16, 16, False)),  # 256 tiles: streamed, strided
        ("lstm", 32, 512, 100, torch.float16, (32, 2, 16, 16, True)),  # proj_size: 7 projection tiles
    ],
)
def test_persistent_grid_on_a_gpu(monkeypatch, mode, B, H, P, dtype, expected):
    _on_a_gpu(monkeypatch)
    grid = strategy.persistent_grid(mode, B, H, P, dtype, torch.device("cuda"))
    assert (grid.n_h, grid.groups, grid.block_u, grid.block_n, grid.resident) == expected
    assert grid.programs <= 132
    assert grid.groups * grid.block_n >= min(B, grid.groups * strategy.MAX_BLOCK_N)


def test_program_cap_and_resident_switch(monkeypatch):
    _on_a_gpu(monkeypatch, cap=8)
    grid = strategy.persistent_grid("lstm", 64, 1024, 1024, torch.float16, torch.device("cuda"))
    assert (grid.n_h, grid.groups, grid.resident) == (8, 1, False)  # 64 tiles on 8 programs: streamed
    monkeypatch.setattr(strategy, "max_programs", lambda device: 132)
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "0")
    assert not strategy.persistent_grid("lstm", 64, 256, 256, torch.float16, torch.device("cuda")).resident
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "yes")
    with pytest.raises(ValueError, match=strategy.RESIDENT_ENV_VAR):
        strategy.persistent_grid("lstm", 64, 256, 256, torch.float16, torch.device("cuda"))


KB = 1024


@pytest.mark.parametrize(
    ("mode", "H", "P", "block_u", "itemsize", "expected"),
    [
        ("lstm", 768, 768, 16, 2, 96 * KB),  # 64 rows x 3 chunks of 256: K = 768 is not padded to 1024
        ("lstm", 1024, 1024, 16, 4, 256 * KB),
        ("lstm", 1024, 1024, 8, 4, 128 * KB),
        ("gru", 768, 768, 16, 2, 96 * KB),  # three gates padded to four slots
        ("rnn_tanh", 50, 50, 16, 4, 16 * 64 * 4),  # 4 chunks of 16
        ("lstm", 256, 128, 16, 2, (64 * 128 + max(16 * 256, 16 * 128)) * 2),  # proj_size: + the W_hr slice
    ],
)
def test_resident_bytes(mode, H, P, block_u, itemsize, expected):
    assert strategy.resident_bytes(mode, H, P, block_u, itemsize) == expected


@pytest.mark.parametrize(("K", "expected"), [(768, (256, 3)), (1024, (256, 4)), (512, (128, 4)), (50, (16, 4)),
                                             (20, (16, 2)), (1, (16, 1))])  # fmt: skip
def test_chunking(K, expected):
    kc, nkc = strategy.chunking(K)
    assert (kc, nkc) == expected and kc * nkc >= K and nkc <= strategy.MAX_CHUNKS


def test_auto_rule(monkeypatch):
    """auto: persistent wherever the persistent grid keeps its slices resident, tiled elsewhere."""
    _on_a_gpu(monkeypatch)
    cuda = torch.device("cuda")
    assert strategy.auto_choice("lstm", 16, 768, 768, torch.float16, cuda) == "persistent"
    assert strategy.auto_choice("lstm", 16, 4096, 4096, torch.float16, cuda) == "tiled"
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "0")
    assert strategy.auto_choice("lstm", 16, 768, 768, torch.float16, cuda) == "tiled"


@pytest.mark.parametrize(("allow", "expected"), [(True, 1), (False, 2)])
def test_fp32_precision_follows_cudnn_allow_tf32(monkeypatch, allow, expected):
    """fp32 recurrences use TF32 exactly when torch.backends.cudnn.allow_tf32 says cuDNN RNNs would."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)
    assert strategy.precision(torch.float32) == expected
    assert strategy.precision(torch.float16) == 0


# --- GPU: real multi-program grids ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("mode", "T", "B", "H", "proj"),
    [
        ("lstm", 1024, 1, 1024, 0),
        ("lstm", 1024, 64, 512, 0),
        ("lstm", 1024, 16, 768, 256),
        ("gru", 1024, 4, 1024, 0),
        ("gru", 1024, 64, 768, 0),
        ("rnn_tanh", 1024, 64, 512, 0),
        ("rnn_relu", 1024, 8, 1024, 0),
    ],
)
def test_persistent_gpu_large(programs, mode, T, B, H, proj, dtype):
    programs()
    check_large(mode, T, B, H, dtype, proj=proj, reverse=B == 4)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [3, 7])
@pytest.mark.parametrize("mode", MODES)
def test_persistent_gpu_few_programs(programs, mode, n):
    """Few programs: each owns many strided hidden tiles; B = 40 gives several batch tiles per group."""
    programs(n)
    check_large(mode, 256, 40, 200, torch.float32, proj=72 if mode == "lstm" else 0)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_persistent_gpu_tf32(programs, mode):
    """fp32 with torch's default allow_tf32 (the suite turns it off elsewhere): TF32 tensor cores, relative error
    at TF32's level."""
    programs()
    with torch.backends.cudnn.flags(allow_tf32=True):
        check_large(mode, 512, 16, 512, torch.float32, tol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_persistent_gpu_deterministic(programs, mode):
    """Same inputs, same bits, run after run: a missing or leaky wait shows up as a moving result."""
    programs()
    x = make_inputs(mode, 512, 64, 512, dtype=torch.bfloat16, device=triton_device())
    lengths = make_lengths(512, 64)
    runs = []
    for _ in range(3):
        out = ops.recurrence(mode, **x, lengths=lengths)
        grads = torch.autograd.grad([o.float().sum() for o in out if o is not None], [x["gx"], x["w_hh"]])
        runs.append([o.detach().clone() for o in out if o is not None] + list(grads))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)
