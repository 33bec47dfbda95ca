"""Persistent whole-sequence kernels (fastrnn.ops.strategy 'persistent') against the fp64 reference, and the
strategy selection.

On CPU the interpreter runs a persistent grid of exactly one program (programs run one after another there,
so a grid barrier between several would spin forever): every cell, forward and backward, lengths, reverse,
proj_size, fp32/fp16. The gpu-marked tests run real multi-program grids at realistic sizes.
"""

from __future__ import annotations

import pytest
import torch
from recurrence_check import check_large, check_recurrence, make_inputs, make_lengths, triton_device

from fastrnn import ops
from fastrnn.ops import _launch, strategy

MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.fixture
def persistent():
    """Run the test body under the persistent strategy and check that only persistent kernels launched."""
    ops.launch_counts.clear()
    with ops.use_strategy("persistent"):
        yield
    assert ops.launch_counts, "no kernel ran"
    assert all(name.endswith("_persistent") for name in ops.launch_counts), dict(ops.launch_counts)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_persistent_lengths(persistent, mode, reverse):
    T, B = 5, 3
    check_recurrence(mode, T, B, 20, lengths=make_lengths(T, B), reverse=reverse)


@pytest.mark.parametrize(("mode", "T", "B", "H"), [("lstm", 1, 1, 5), ("gru", 4, 17, 80), ("rnn_tanh", 3, 2, 50)])
def test_persistent_awkward_sizes(persistent, mode, T, B, H):
    """B not a multiple of 16 (several batch tiles in the one program), H over one tile, T = 1, no lengths."""
    check_recurrence(mode, T, B, H)


@pytest.mark.parametrize(("H", "proj", "reverse"), [(20, 7, True), (80, 66, False)])
def test_persistent_lstm_proj(persistent, H, proj, reverse):
    T, B = 4, 3
    check_recurrence("lstm", T, B, H, proj=proj, lengths=make_lengths(T, B), reverse=reverse)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_persistent_fp16(persistent, mode):
    T, B = 4, 3
    proj = 7 if mode == "lstm" else 0
    check_recurrence(mode, T, B, 20, proj=proj, lengths=make_lengths(T, B), dtype=torch.float16)


def test_persistent_inference_ping_pong():
    """Without a gradient the forward keeps two state slots (what a grid barrier per step must protect)."""
    x = {n: None if v is None else v.detach() for n, v in make_inputs("lstm", 6, 3, 20, proj=7).items()}
    lengths = make_lengths(6, 3)
    ops.launch_counts.clear()
    with ops.use_strategy("persistent"):
        y, h_n, c_n = ops.recurrence("lstm", **x, lengths=lengths)
    with ops.use_strategy("tiled"):
        ref = ops.recurrence("lstm", **x, lengths=lengths)
    assert ops.launch_counts == {"lstm_fwd_persistent": 1, "lstm_fwd": 1}
    for a, b in zip((y, h_n, c_n), ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --- strategy selection -----------------------------------------------------------------------------------


def _run_lstm():
    ops.launch_counts.clear()
    x = make_inputs("lstm", 3, 2, 5)
    y, h_n, c_n = ops.recurrence("lstm", **x)
    (y.sum() + h_n.sum() + c_n.sum()).backward()
    return dict(ops.launch_counts)


def test_auto_keeps_the_tiled_kernels(monkeypatch):
    monkeypatch.delenv(strategy.ENV_VAR, raising=False)
    assert strategy.requested() == "auto"
    assert _run_lstm() == {"lstm_fwd": 1, "lstm_bwd": 1}


def test_env_var_and_context(monkeypatch):
    monkeypatch.setenv(strategy.ENV_VAR, "persistent")
    assert _run_lstm() == {"lstm_fwd_persistent": 1, "lstm_bwd_persistent": 1}
    with ops.use_strategy("tiled"):  # the innermost request wins over the environment
        assert _run_lstm() == {"lstm_fwd": 1, "lstm_bwd": 1}
    monkeypatch.setenv(strategy.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=strategy.ENV_VAR):
        _run_lstm()
    with pytest.raises(ValueError, match="strategy"), ops.use_strategy("fastest"):
        pass


def test_interpreter_falls_back_with_several_programs(monkeypatch):
    if not _launch.interpreting():
        pytest.skip("the fallback is for the interpreter")
    monkeypatch.setenv(strategy.PROGRAMS_ENV_VAR, "2")
    with ops.use_strategy("persistent"), pytest.warns(RuntimeWarning, match="interpreter"):
        assert _run_lstm() == {"lstm_fwd": 1, "lstm_bwd": 1}


@pytest.mark.parametrize(
    ("B", "H", "P", "sms", "cap", "expected"),
    [
        (64, 1024, 1024, 132, None, (64, 2, 16)),  # hidden split first, leftover programs take batch groups
        (64, 512, 512, 132, None, (32, 4, 16)),
        (1, 768, 768, 132, None, (48, 1, 16)),
        (16, 4096, 4096, 132, None, (132, 1, 16)),  # more tiles than programs: strided ownership
        (64, 1024, 200, 132, 8, (8, 1, 16)),  # FASTRNN_PERSISTENT_PROGRAMS caps the grid
    ],
)
def test_persistent_grid_on_a_gpu(monkeypatch, B, H, P, sms, cap, expected):
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(strategy, "max_programs", lambda device: sms)
    if cap is None:
        monkeypatch.delenv(strategy.PROGRAMS_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(strategy.PROGRAMS_ENV_VAR, str(cap))
    grid = strategy.persistent_grid(B, H, P, torch.device("cuda"))
    assert (grid.n_h, grid.groups, grid.block_h) == expected
    assert grid.programs <= min(sms, cap or sms)
    assert strategy.launch_options(torch.device("cuda")) == {"launch_cooperative_grid": True}


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
def test_persistent_gpu_large(persistent, mode, T, B, H, proj, dtype):
    check_large(mode, T, B, H, dtype, proj=proj, reverse=B == 4)


@pytest.mark.gpu
@pytest.mark.parametrize("programs", ["3", "7"])
@pytest.mark.parametrize("mode", MODES)
def test_persistent_gpu_few_programs(persistent, monkeypatch, mode, programs):
    """Few programs: each owns many strided hidden tiles; B = 40 gives several batch tiles per group."""
    monkeypatch.setenv(strategy.PROGRAMS_ENV_VAR, programs)
    check_large(mode, 256, 40, 200, torch.float32, proj=72 if mode == "lstm" else 0)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_persistent_gpu_deterministic(persistent, mode):
    """Same inputs, same bits, run after run: a missing or leaky grid barrier shows up as a moving result."""
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
