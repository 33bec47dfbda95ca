"""Persistent whole-sequence kernels (fastrnn.ops.strategy 'persistent') against the fp64 reference, and the
strategy selection.

On CPU the interpreter runs a persistent grid of exactly one program (programs run one after another there,
so a grid barrier between several would spin forever): every cell, forward and backward, lengths, reverse,
proj_size, fp32/fp16, each with the weight slices resident (loaded once before the time loop) and streamed
(re-read every step). The gpu-marked tests run real multi-program grids at realistic sizes.
"""

from __future__ import annotations

import pytest
import torch
from recurrence_check import check_large, check_recurrence, make_inputs, make_lengths, triton_device

from fastrnn import ops
from fastrnn.ops import _launch, strategy

MODES = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


class Variant:
    """The weight variant a ``persistent`` test runs: ``resident`` (where the fit rule allows: ``fits``) or
    ``streaming``."""

    def __init__(self, name: str):
        self.name = name
        self.fits = True


@pytest.fixture(params=["resident", "streaming"])
def persistent(request, monkeypatch):
    """Run the test body under the persistent strategy, resident or streaming weights, and check that only
    persistent kernels of that variant launched (resident only where the test leaves ``fits`` set)."""
    variant = Variant(request.param)
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "1" if variant.name == "resident" else "0")
    ops.launch_counts.clear()
    with ops.use_strategy("persistent"):
        yield variant
    names = dict(ops.launch_counts)
    assert names, "no kernel ran"
    resident = variant.name == "resident" and variant.fits
    suffix = "_persistent_resident" if resident else "_persistent"
    assert all(name.endswith(suffix) for name in names), names


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("mode", MODES)
def test_persistent_lengths(persistent, mode, reverse):
    T, B = 5, 3
    check_recurrence(mode, T, B, 20, lengths=make_lengths(T, B), reverse=reverse)


@pytest.mark.parametrize(("mode", "T", "B", "H"), [("lstm", 1, 1, 5), ("gru", 4, 17, 80), ("rnn_tanh", 3, 2, 50)])
def test_persistent_awkward_sizes(persistent, mode, T, B, H):
    """B not a multiple of 16 (several batch tiles in the one program), H over one tile (two tiles in the one
    program: too many for the resident variant, which falls back to streaming), T = 1, no lengths."""
    persistent.fits = H <= _launch.MAX_BLOCK
    check_recurrence(mode, T, B, H)


@pytest.mark.parametrize(("H", "proj", "reverse"), [(20, 7, True), (80, 66, False)])
def test_persistent_lstm_proj(persistent, H, proj, reverse):
    T, B = 4, 3
    persistent.fits = H <= _launch.MAX_BLOCK
    check_recurrence("lstm", T, B, H, proj=proj, lengths=make_lengths(T, B), reverse=reverse)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_persistent_fp16(persistent, mode):
    T, B = 4, 3
    proj = 7 if mode == "lstm" else 0
    check_recurrence(mode, T, B, 20, proj=proj, lengths=make_lengths(T, B), dtype=torch.float16)


@pytest.mark.parametrize("resident", ["1", "0"], ids=["resident", "streaming"])
def test_persistent_inference_ping_pong(monkeypatch, resident):
    """Without a gradient the forward keeps two state slots (what a grid barrier per step must protect)."""
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, resident)
    x = {n: None if v is None else v.detach() for n, v in make_inputs("lstm", 6, 3, 20, proj=7).items()}
    lengths = make_lengths(6, 3)
    ops.launch_counts.clear()
    with ops.use_strategy("persistent"):
        y, h_n, c_n = ops.recurrence("lstm", **x, lengths=lengths)
    with ops.use_strategy("tiled"):
        ref = ops.recurrence("lstm", **x, lengths=lengths)
    name = "lstm_fwd_persistent_resident" if resident == "1" else "lstm_fwd_persistent"
    assert ops.launch_counts == {name: 1, "lstm_fwd": 1}
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
    monkeypatch.delenv(strategy.RESIDENT_ENV_VAR, raising=False)
    assert _run_lstm() == {"lstm_fwd_persistent_resident": 1, "lstm_bwd_persistent_resident": 1}
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "0")
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


KB = 1024


@pytest.mark.parametrize(
    ("mode", "H", "P", "itemsize", "expected"),
    [
        ("lstm", 1024, 1024, 2, 128 * KB),  # 4 gates x [1024, 16] fp16, forward and backward alike
        ("lstm", 1024, 1024, 4, 256 * KB),
        ("gru", 768, 768, 2, 96 * KB),  # K = 768 padded to 1024
        ("rnn_tanh", 50, 50, 4, 64 * 16 * 4),  # K padded to a power of two
        ("lstm", 1024, 256, 2, (4 * 1024 + 256) * 16 * 2),  # backward: 4 x [pad(H), 16] + W_hr [pad(P), 16]
        ("lstm", 20, 7, 4, (4 * 32 + 16) * 16 * 4),  # tiny: every block at least 16 deep
    ],
)
def test_resident_bytes(mode, H, P, itemsize, expected):
    assert strategy.resident_bytes(mode, H, P, 16, itemsize) == expected


@pytest.mark.parametrize(
    ("mode", "H", "P", "dtype", "sms", "fits"),
    [
        ("lstm", 1024, 1024, torch.float16, 132, True),  # 128 KB: at the budget
        ("lstm", 1024, 1024, torch.bfloat16, 132, True),
        ("lstm", 1024, 1024, torch.float32, 132, False),  # 256 KB
        ("lstm", 512, 512, torch.float32, 132, False),  # fp32 budget: 32 KB
        ("rnn_tanh", 512, 512, torch.float32, 132, True),  # 32 KB
        ("lstm", 128, 128, torch.float32, 132, True),
        ("gru", 1024, 1024, torch.float32, 132, False),  # 192 KB
        ("gru", 1024, 1024, torch.float16, 132, True),
        ("rnn_relu", 2048, 2048, torch.float16, 132, True),  # 128 tiles on 132 programs, 64 KB
        ("rnn_relu", 4096, 4096, torch.float16, 132, False),  # 256 tiles: programs would own two
        ("lstm", 512, 512, torch.float16, 16, False),  # few programs: strided tiles, never resident
        ("lstm", 1024, 1040, torch.float16, 132, False),  # P padded to 2048: 4 x [2048, 16] fp16
    ],
)
def test_resident_fit_rule(monkeypatch, mode, H, P, dtype, sms, fits):
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setattr(strategy, "max_programs", lambda device: sms)
    monkeypatch.delenv(strategy.PROGRAMS_ENV_VAR, raising=False)
    monkeypatch.delenv(strategy.RESIDENT_ENV_VAR, raising=False)
    grid = strategy.persistent_grid(64, H, P, torch.device("cuda"))
    assert strategy.resident_fits(mode, grid, H, P, dtype) == fits
    args = strategy.resident_args(mode, grid, H, P, dtype)
    assert args["RESIDENT"] == fits
    pad = (lambda n: max(16, 1 << (n - 1).bit_length())) if fits else (lambda n: 16)
    assert args["BHP"] == pad(H)
    assert args.get("BP", pad(P)) == pad(P) and ("BP" in args) == (mode == "lstm")
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "0")  # the switch for comparing the variants on a GPU
    assert not strategy.resident_fits(mode, grid, H, P, dtype)
    monkeypatch.setenv(strategy.RESIDENT_ENV_VAR, "yes")
    with pytest.raises(ValueError, match=strategy.RESIDENT_ENV_VAR):
        strategy.resident_fits(mode, grid, H, P, dtype)


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
