"""fastrnn.RNN / LSTM / GRU against torch.nn: outputs, final states and every gradient, on a hand-picked grid.

The grid is pairwise-style rather than a cartesian product: every value of every axis appears, and the risky
combinations (packed + bidirectional + multi-layer, proj_size + bidirectional + packed, unbatched + hx,
batch_first packing, T=1, B=1, H not a power of two, hidden 1) appear for every cell kind.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import random
import warnings

import pytest
import torch
from helpers import assert_close
from parity import (
    MODES,
    Case,
    check_module_parity,
    clone_inputs,
    compare,
    fastrnn_module,
    forward,
    has_triton_recurrence,
    make_inputs,
    one_thread,
    run,
    torch_module,
    triton_device,
)

import fastrnn


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


# Axes varied per cell kind. Each row is applied to lstm, gru, rnn_tanh and rnn_relu.
SHAPES: list[dict] = [
    dict(),  # L=1, T=5, B=3, I=4, H=7, hx given
    dict(L=2, bidir=True, bias=False, batch_first=True, hx=False),
    dict(L=2, bidir=True, packed="unsorted"),  # the risky one: packed unsorted, stacked, both directions
    dict(packed="sorted", batch_first=True, hx=False, bias=False),
    dict(L=3, bidir=True, packed="unsorted", batch_first=True, hx=False, T=6, B=5, short=True),
    dict(unbatched=True, L=2),  # unbatched with hx
    dict(unbatched=True, bidir=True, batch_first=True, hx=False),
    dict(T=1, B=1, L=3),
    dict(T=1, packed="unsorted", bidir=True),
    dict(I=1, H=1, bidir=True, L=2),  # hidden 1
    dict(B=1, packed="sorted", bidir=True, L=2),  # a single packed sequence
    dict(H=50, T=3, B=2, batch_first=True),  # H not a power of two
    dict(unbatched=True, T=1, bias=False),
    dict(xscale=60.0, L=2, bidir=True, packed="unsorted", T=7),  # saturated gates: tanh/sigmoid at +-60
]
LSTM_PROJ: list[dict] = [
    dict(proj=3, L=2, bidir=True, packed="unsorted"),
    dict(proj=1, unbatched=True, L=2, batch_first=True),
    dict(proj=2, batch_first=True, bias=False, T=1, B=1),
    dict(proj=4, packed="sorted", hx=False, L=3, bidir=True, batch_first=True),
    dict(proj=5, H=6, L=2, hx=False, B=4),
]
CASES = [Case(mode=m, **s) for m in MODES for s in SHAPES] + [Case(mode="lstm", **s) for s in LSTM_PROJ]
ids = [str(c) for c in CASES]

# A few per cell kind for the low-precision dtypes (forward everywhere, gradients on a subset).
# (Not ReLU at 60x input scale: unbounded activations lose absolute accuracy in torch's own fp16/bf16 path.)
HALF_CASES = [c for c in CASES if (c.proj or c.packed == "unsorted" or (c.unbatched and c.hx) or c.H == 50)
              and not (c.mode == "rnn_relu" and c.xscale > 1)]

BACKENDS = ["reference", "auto"]
needs_triton = pytest.mark.skipif(not has_triton_recurrence(), reason="fastrnn.ops.recurrence not written yet")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_parity_fp64(case, backend):
    check_module_parity(case, backend, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_parity_fp32(case, backend):
    check_module_parity(case, backend, torch.float32)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", HALF_CASES, ids=[str(c) for c in HALF_CASES])
def test_parity_low_precision(case, backend, dtype, backward):
    # torch.nn runs fp16/bf16 on CPU: the native backend must match it; every backend must match the fp64
    # oracle on the rounded weights within the dtype's tolerance (the reference computes in fp32).
    check_module_parity(case, backend, dtype, backward=backward)


# The interpreter is slow: every cell kind, packed, bidirectional, multi-layer and proj_size, but few shapes.
TRITON_CASES = [Case(mode=m) for m in MODES] + [
    Case(mode=m, L=2, bidir=True, packed="unsorted", T=4, B=3) for m in MODES
] + [
    Case(mode="lstm", proj=3, bidir=True, packed="unsorted", T=3, B=3),
    Case(mode="lstm", proj=2, unbatched=True, L=2, bias=False),
    Case(mode="lstm", packed="sorted", batch_first=True, hx=False, B=1, T=3),
    Case(mode="gru", unbatched=True, hx=True, batch_first=True, T=1),
    Case(mode="gru", L=3, bias=False, T=2, B=1),
    Case(mode="rnn_tanh", H=50, T=3, B=2, batch_first=True, hx=False),
    Case(mode="rnn_relu", I=1, H=1, bidir=True, packed="sorted", T=3),
    *(Case(mode=m, xscale=60.0, bidir=True, T=4, B=2) for m in MODES),
]


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts calls of fastrnn.ops.recurrence, so a triton test cannot pass on a silent fallback."""
    import fastrnn.ops

    calls = []
    original = fastrnn.ops.recurrence

    def spy(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(fastrnn.ops, "recurrence", spy)
    return calls


@needs_triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=[str(c) for c in TRITON_CASES])
def test_parity_triton_fp32(case, triton_calls):
    check_module_parity(case, "triton", torch.float32, device=triton_device())
    assert len(triton_calls) == case.L * case.directions


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", TRITON_CASES[4:8], ids=[str(c) for c in TRITON_CASES[4:8]])
def test_parity_triton_low_precision_forward(case, dtype, triton_calls):
    check_module_parity(case, "triton", dtype, backward=False, device=triton_device())
    assert triton_calls


def test_grid_covers_every_axis_value():
    """The hand-picked grid must keep covering every value of every axis (guards future edits)."""
    for mode in MODES:
        mine = [c for c in CASES if c.mode == mode]
        assert {c.L for c in mine} >= {1, 2, 3}
        for axis in ("bidir", "bias", "batch_first", "hx", "unbatched"):
            assert {getattr(c, axis) for c in mine} == {False, True}, (mode, axis)
        assert {c.packed for c in mine} == {None, "sorted", "unsorted"}
        assert any(c.T == 1 for c in mine) and any(c.B == 1 for c in mine) and any(c.H == 1 for c in mine)
        assert any(c.packed and c.bidir and c.L > 1 for c in mine)
        assert any(c.packed and c.batch_first for c in mine)
        assert any(c.unbatched and c.hx for c in mine)
    assert any(c.proj and c.bidir and c.packed for c in CASES)


# ---------------------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------------------

CELL_CLASSES = {
    "lstm": (torch.nn.LSTMCell, fastrnn.LSTMCell, {}),
    "gru": (torch.nn.GRUCell, fastrnn.GRUCell, {}),
    "rnn_tanh": (torch.nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "relu"}),
}
CELL_SHAPES = [
    dict(),  # B=3, I=4, H=7, hx given
    dict(hx=False),
    dict(bias=False),
    dict(B=1),
    dict(unbatched=True),
    dict(unbatched=True, hx=False, bias=False),
    dict(I=1, H=1),
    dict(H=50, B=2),
]
CELL_CASES = [(m, s) for m in CELL_CLASSES for s in CELL_SHAPES]
cell_ids = [m + "-" + ("-".join(f"{k}={v}" for k, v in s.items()) or "default") for m, s in CELL_CASES]


def check_cell_parity(mode, shape, backend, dtype, backward=True, device="cpu"):
    torch_cls, fast_cls, extra = CELL_CLASSES[mode]
    I, H, B = shape.get("I", 4), shape.get("H", 7), shape.get("B", 3)  # noqa: E741
    bias, unbatched, given = shape.get("bias", True), shape.get("unbatched", False), shape.get("hx", True)
    ref64 = torch_cls(I, H, bias=bias, dtype=torch.float64, device=device, **extra)
    ref = torch_cls(I, H, bias=bias, dtype=dtype, device=device, **extra)
    ref.load_state_dict(ref64.state_dict())
    ref64.load_state_dict(ref.state_dict())
    mod = fastrnn.from_torch(ref, backend=backend)
    assert isinstance(mod, fast_cls)
    gen = torch.Generator().manual_seed(3)
    batch = () if unbatched else (B,)
    x = torch.randn(*batch, I, generator=gen, dtype=torch.float64).to(dtype)
    states = [torch.randn(*batch, H, generator=gen, dtype=torch.float64).to(dtype)
              for _ in range(2 if mode == "lstm" else 1)] if given else []
    gouts = [torch.randn(*batch, H, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2)]

    def go(module, cast):
        xs = x.to(device=device, dtype=cast).clone().requires_grad_()
        hs = [s.to(device=device, dtype=cast).clone().requires_grad_() for s in states]
        hx = None if not given else (tuple(hs) if mode == "lstm" else hs[0])
        out = module(xs, hx)
        outs = list(out) if mode == "lstm" else [out]
        res = {f"out{i}": o for i, o in enumerate(outs)}
        if backward:
            sum((o * g.to(device=device, dtype=cast)).sum() for o, g in zip(outs, gouts, strict=False)).backward()
            res["grad input"] = xs.grad
            res |= {f"grad hx{i}": h.grad for i, h in enumerate(hs)}
            res |= {f"grad {n}": p.grad for n, p in module.named_parameters()}
        return res

    got = go(mod, dtype)
    refs = []
    if dtype in (torch.float64, torch.float32) or backend == "auto":
        refs.append(("vs torch.nn same dtype: ", go(ref, dtype)))
    if dtype != torch.float64 and not (backend == "auto" and backward and dtype not in (torch.float32,)):
        refs.append(("vs fp64 torch.nn: ", go(ref64, torch.float64)))
    assert refs
    for label, expected in refs:
        assert set(expected) == set(got)
        for name in expected:
            assert got[name].dtype == dtype, f"{name}: dtype {got[name].dtype}"
            assert_close(label + name, expected[name], got[name], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("mode", "shape"), CELL_CASES, ids=cell_ids)
def test_cell_parity(mode, shape, backend, dtype):
    check_cell_parity(mode, shape, backend, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("mode", "shape"), [c for c in CELL_CASES if c[1] in (CELL_SHAPES[0], CELL_SHAPES[4])],
                         ids=[i for c, i in zip(CELL_CASES, cell_ids, strict=True)
                              if c[1] in (CELL_SHAPES[0], CELL_SHAPES[4])])
def test_cell_parity_low_precision(mode, shape, backend, dtype):
    check_cell_parity(mode, shape, backend, dtype, backward=backend == "reference")
    check_cell_parity(mode, shape, backend, dtype, backward=False)


@needs_triton
@pytest.mark.parametrize(("mode", "shape"), [c for c in CELL_CASES if c[1] in (CELL_SHAPES[0], CELL_SHAPES[5])],
                         ids=[i for c, i in zip(CELL_CASES, cell_ids, strict=True)
                              if c[1] in (CELL_SHAPES[0], CELL_SHAPES[5])])
def test_cell_parity_triton(mode, shape, triton_calls):
    check_cell_parity(mode, shape, "triton", torch.float32, device=triton_device())
    assert triton_calls == [mode]


# ---------------------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_dropout_eval_mode_matches_torch(mode, backend):
    case = Case(mode=mode, L=3, bidir=True)
    ref = torch_module(case).eval()
    ref.dropout = 0.4
    mod = fastrnn.from_torch(ref, backend=backend)
    assert mod.dropout == 0.4 and not mod.training
    inp = make_inputs(case)
    compare(run(ref, case, clone_inputs(inp)), run(mod, case, clone_inputs(inp)), torch.float64)


@needs_triton
@pytest.mark.parametrize("mode", MODES)
def test_backward_in_eval_mode_triton(mode):
    """cuDNN refuses a backward in eval mode; fastrnn's kernels take one: eval-mode gradients (dropout off)
    match torch.nn's CPU path."""
    case = Case(mode=mode, L=2, bidir=True, T=3, B=2, H=5, packed="unsorted")
    ref = torch_module(case, torch.float32).eval()
    ref.dropout = 0.4
    mod = fastrnn.from_torch(ref, backend="triton").to(triton_device())
    assert not mod.training
    got = run(mod, case, clone_inputs(make_inputs(case, torch.float32, triton_device())))
    compare(run(ref, case, clone_inputs(make_inputs(case, torch.float32))), got, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_dropout_one_in_training_matches_torch(mode, backend):
    """dropout=1 zeroes the whole inter-layer path: deterministic, so torch.nn can be matched exactly."""
    case = Case(mode=mode, L=2, bidir=True, packed="unsorted")
    ref = torch_module(case).train()
    ref.dropout = 1.0
    mod = fastrnn.from_torch(ref, backend=backend)
    assert mod.training
    inp = make_inputs(case)
    compare(run(ref, case, clone_inputs(inp)), run(mod, case, clone_inputs(inp)), torch.float64)


def _dropout_probe(cls, backend, p):
    """2-layer ReLU RNN whose second layer is relu(dropout(y0)): W_ih_l1 = I, W_hh_l1 = 0, no bias."""
    kw = {} if cls is torch.nn.RNN else {"backend": backend}
    m = cls(3, 16, num_layers=2, nonlinearity="relu", bias=False, dropout=p, dtype=torch.float64, **kw)
    with torch.no_grad():
        m.weight_ih_l1.copy_(torch.eye(16))
        m.weight_hh_l1.zero_()
    return m


@pytest.mark.parametrize("impl", ["torch.nn", "reference", "auto"])
def test_dropout_statistics_in_training(impl):
    """Inter-layer dropout zeroes a fraction ~p of the layer-0 outputs and scales the rest by 1/(1-p).

    The same checks run on torch.nn itself, which shows the probe measures what torch.nn does.
    """
    p = 0.3
    cls = torch.nn.RNN if impl == "torch.nn" else fastrnn.RNN
    m = _dropout_probe(cls, impl, p)
    x = torch.randn(40, 25, 3, dtype=torch.float64)
    m.eval()
    y_eval, h_eval = m(x)
    m.train()
    y_train, h_train = m(x)
    torch.testing.assert_close(h_train[0], h_eval[0], rtol=0, atol=0)  # layer 0 never sees dropout
    live = y_eval > 0
    kept = y_train[live] != 0
    frac_dropped = 1 - kept.double().mean().item()
    assert abs(frac_dropped - p) < 0.03, f"dropped {frac_dropped:.3f} of the inter-layer activations, p={p}"
    torch.testing.assert_close(y_train[live][kept], y_eval[live][kept] / (1 - p))
    assert (y_train[~live] == 0).all()
    # a second training-mode call draws a new mask; the same seed reproduces it
    torch.manual_seed(5)
    a = m(x)[0]
    b = m(x)[0]
    torch.manual_seed(5)
    c = m(x)[0]
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_dropout_training_differs_from_eval_but_not_the_first_layer(mode, backend):
    case = Case(mode=mode, L=2, T=6, B=4, H=16)
    mod = fastrnn_module(case, backend=backend)
    mod.dropout = 0.5
    inp = make_inputs(case)
    mod.eval()
    y_eval, _, h_eval, c_eval = forward(mod, case, clone_inputs(inp))
    mod.train()
    y_train, _, h_train, c_train = forward(mod, case, clone_inputs(inp))
    assert not torch.allclose(y_train, y_eval)
    assert not torch.allclose(h_train[1], h_eval[1])
    torch.testing.assert_close(h_train[0], h_eval[0], rtol=0, atol=0)
    if c_eval is not None:
        torch.testing.assert_close(c_train[0], c_eval[0], rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_dropout_with_one_layer_warns_like_torch(mode):
    case = Case(mode=mode)
    kw = {"nonlinearity": mode[4:]} if mode.startswith("rnn") else {}
    with pytest.warns(UserWarning, match="num_layers greater than 1") as caught:
        type(torch_module(case))(3, 4, dropout=0.2, **kw)
    torch_messages = [str(w.message) for w in caught]
    with pytest.warns(UserWarning, match="num_layers greater than 1") as caught:
        type(fastrnn_module(case))(3, 4, dropout=0.2, **kw)
    assert [str(w.message) for w in caught] == torch_messages
    assert caught[0].filename == __file__, "the warning should point at the caller's line, as torch's does"


@pytest.mark.parametrize("kwargs", [dict(dropout=0.2, num_layers=2), dict(dropout=0.0), dict()])
def test_no_dropout_warning_when_torch_gives_none(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cls in (fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN):
            cls(3, 4, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Module structure: repr, parameters, init, state dicts, conversion, serialization
# ---------------------------------------------------------------------------------------------------------

PAIRS = {
    "LSTM": (torch.nn.LSTM, fastrnn.LSTM), "GRU": (torch.nn.GRU, fastrnn.GRU), "RNN": (torch.nn.RNN, fastrnn.RNN),
    "LSTMCell": (torch.nn.LSTMCell, fastrnn.LSTMCell), "GRUCell": (torch.nn.GRUCell, fastrnn.GRUCell),
    "RNNCell": (torch.nn.RNNCell, fastrnn.RNNCell),
}
CONFIGS = [
    ("LSTM", (10, 20), {}),
    ("LSTM", (10, 20, 2), dict(bias=False, batch_first=True, dropout=0.5, bidirectional=True)),
    ("LSTM", (3, 8), dict(proj_size=5, num_layers=3, bidirectional=True)),
    ("LSTM", (3, 8), dict(proj_size=2, bias=False)),
    ("GRU", (10, 20), {}),
    ("GRU", (1, 1, 3), dict(dropout=0.25, bidirectional=True, batch_first=True)),
    ("GRU", (5, 7), dict(bias=False, num_layers=2)),
    ("RNN", (10, 20), {}),
    ("RNN", (10, 20, 2, "relu"), {}),
    ("RNN", (4, 6), dict(nonlinearity="relu", bias=False, bidirectional=True, num_layers=2)),
    ("RNN", (4, 6), dict(nonlinearity="tanh", dropout=1.0, num_layers=3, batch_first=True)),
    ("LSTMCell", (10, 20), {}),
    ("LSTMCell", (3, 5), dict(bias=False)),
    ("GRUCell", (10, 20), {}),
    ("GRUCell", (3, 5, False), {}),
    ("RNNCell", (10, 20), {}),
    ("RNNCell", (3, 5), dict(nonlinearity="relu", bias=False)),
    ("RNNCell", (3, 5, True, "relu"), {}),
]
config_ids = [f"{n}{a}{k or ''}".replace(" ", "") for n, a, k in CONFIGS]


def build_pair(name, args, kwargs, **extra):
    """(torch.nn module, fastrnn module) of the same configuration; ``extra`` goes to fastrnn only."""
    torch_cls, fast_cls = PAIRS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch_cls(*args, **kwargs), fast_cls(*args, **kwargs, **extra)


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS, ids=config_ids)
def test_repr_matches_torch(name, args, kwargs):
    ref, mod = build_pair(name, args, kwargs)
    assert repr(mod) == repr(ref)
    assert repr(fastrnn.from_torch(ref, backend="reference")) == repr(ref)


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS, ids=config_ids)
def test_public_attributes_match_torch(name, args, kwargs):
    """Same public attributes with the same values, plus ``backend`` (e.g. RNN(relu).mode is 'RNN_RELU'; the
    cells have no ``mode``, as in torch.nn, rather than one that misreports RNNCell's relu)."""
    ref, mod = build_pair(name, args, kwargs)

    def public(module):
        return {k: v for k, v in vars(module).items() if not k.startswith("_")}

    assert public(mod) == public(ref) | {"backend": None}


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS, ids=config_ids)
def test_parameters_names_shapes_order_match_torch(name, args, kwargs):
    ref, mod = build_pair(name, args, kwargs)
    assert [(n, p.shape, p.dtype) for n, p in mod.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    assert list(mod.state_dict()) == list(ref.state_dict())
    assert all(p.requires_grad for p in mod.parameters())
    assert list(mod.buffers()) == []
    for attr in ("mode", "input_size", "hidden_size", "bias", "num_layers", "batch_first", "dropout", "bidirectional",
                 "proj_size", "nonlinearity", "_flat_weights_names", "_all_weights"):
        if hasattr(ref, attr):
            assert getattr(mod, attr) == getattr(ref, attr), attr
            assert type(getattr(mod, attr)) is type(getattr(ref, attr)), attr
    if not name.endswith("Cell"):
        assert [[w.shape for w in ws] for ws in mod.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
        assert all(w is getattr(mod, n) for ws, ns in zip(mod.all_weights, mod._all_weights, strict=True)
                   for w, n in zip(ws, ns, strict=True))
        assert mod.flatten_parameters() is None


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS, ids=config_ids)
def test_default_init_is_uniform_in_plus_minus_one_over_sqrt_hidden(name, args, kwargs):
    _, mod = build_pair(name, args, kwargs)
    bound = 1 / math.sqrt(mod.hidden_size)
    values = torch.cat([p.detach().flatten() for p in mod.parameters()])
    assert values.abs().max() <= bound
    if values.numel() >= 200:
        assert values.min() < -0.9 * bound and values.max() > 0.9 * bound, "not spread over the interval"
        assert abs(values.mean().item()) < 0.1 * bound
    # every parameter is initialised (a torch.empty that was never written is NaN under the conftest poison)
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in mod.parameters())
    # torch.nn draws the same numbers in the same order: the same seed gives the same weights
    torch_cls, fast_cls = PAIRS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(11)
        ref = torch_cls(*args, **kwargs)
        torch.manual_seed(11)
        again = fast_cls(*args, **kwargs)
    for (n, p), (_, q) in zip(again.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_reset_parameters_redraws():
    mod = fastrnn.LSTM(3, 4, 2)
    before = [p.detach().clone() for p in mod.parameters()]
    mod.reset_parameters()
    assert all(not torch.equal(a, p) for a, p in zip(before, mod.parameters(), strict=True))


def _example_input(name, mod, dtype=torch.float32):
    if name.endswith("Cell"):
        return (torch.randn(2, mod.input_size, dtype=dtype),)
    return (torch.randn(3, 2, mod.input_size, dtype=dtype),)


def _outputs(name, module, args):
    out = module(*args)
    flat = []
    for o in (out if isinstance(out, tuple) else (out,)):
        flat.extend(o if isinstance(o, tuple) else (o,))
    return flat


def _assert_same_outputs(name, a, b, args, exact=False):
    for x, y in zip(_outputs(name, a, args), _outputs(name, b, args), strict=True):
        if exact:
            assert torch.equal(x, y)
        else:
            assert_close(name, x, y)


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS, ids=config_ids)
def test_state_dict_loads_both_ways(name, args, kwargs):
    ref, mod = build_pair(name, args, kwargs)
    ref.eval(), mod.eval()
    assert mod.load_state_dict(ref.state_dict()) is not None  # strict: every key matches
    for (n, p), (_, q) in zip(mod.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    x = _example_input(name, mod)
    _assert_same_outputs(name, ref, mod, x)
    ref2, _ = build_pair(name, args, kwargs)
    ref2.load_state_dict(mod.state_dict())
    ref2.eval()
    _assert_same_outputs(name, ref, ref2, x, exact=True)


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS[::3], ids=config_ids[::3])
def test_optimizer_state_dict_interchanges(name, args, kwargs):
    ref, mod = build_pair(name, args, kwargs)
    mod.load_state_dict(ref.state_dict())
    opt_ref = torch.optim.Adam(ref.parameters(), lr=0.1)
    opt_mod = torch.optim.Adam(mod.parameters(), lr=0.1)
    x = _example_input(name, mod)

    def step(module, opt):
        opt.zero_grad()
        sum(o.square().sum() for o in _outputs(name, module.eval(), x)).backward()
        opt.step()

    step(ref, opt_ref)
    step(mod, opt_mod)
    for (n, p), (_, q) in zip(mod.named_parameters(), ref.named_parameters(), strict=True):
        assert_close(n, q, p)
    # swap optimizer states: each optimizer continues from the other's moments
    state_ref, state_mod = opt_ref.state_dict(), opt_mod.state_dict()
    opt_mod.load_state_dict(state_ref)
    opt_ref.load_state_dict(state_mod)
    step(ref, opt_ref)
    step(mod, opt_mod)
    for (n, p), (_, q) in zip(mod.named_parameters(), ref.named_parameters(), strict=True):
        assert_close(n, q, p)
        assert_close(n + " exp_avg", opt_ref.state[q]["exp_avg"], opt_mod.state[p]["exp_avg"])


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS, ids=config_ids)
def test_from_torch_to_torch_round_trip(name, args, kwargs):
    ref, _ = build_pair(name, args, kwargs)
    ref.eval()
    mod = fastrnn.from_torch(ref, backend="reference")
    assert type(mod) is PAIRS[name][1] and mod.backend == "reference" and not mod.training
    assert repr(mod) == repr(ref)
    back = fastrnn.to_torch(mod)
    assert type(back) is PAIRS[name][0] and not back.training
    assert repr(back) == repr(ref)
    for (n, p), (m, q) in zip(back.state_dict().items(), ref.state_dict().items(), strict=True):
        assert n == m and torch.equal(p, q)
        assert p.data_ptr() != q.data_ptr(), "a converted module must not share storage with its source"
    x = _example_input(name, mod)
    _assert_same_outputs(name, ref, mod, x)
    _assert_same_outputs(name, ref, back, x, exact=True)
    assert fastrnn.from_torch(ref.train()).training
    assert fastrnn.from_torch(ref).backend is None


def test_from_torch_keeps_dtype_and_rejects_other_modules():
    ref = torch.nn.GRU(3, 4, dtype=torch.float64)
    assert next(fastrnn.from_torch(ref).parameters()).dtype == torch.float64
    with pytest.raises(TypeError, match="Linear"):
        fastrnn.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(TypeError):
        fastrnn.to_torch(torch.nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="backend"):
        fastrnn.from_torch(ref, backend="cudnn")


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS[::2], ids=config_ids[::2])
def test_dtype_conversions(name, args, kwargs):
    ref, mod = build_pair(name, args, kwargs)
    mod.load_state_dict(ref.state_dict())
    ref.eval(), mod.eval()
    for convert in (lambda m: m.double(), lambda m: m.to(torch.float64), lambda m: m.to(dtype=torch.float64)):
        r, m = convert(copy.deepcopy(ref)), convert(copy.deepcopy(mod))
        assert all(p.dtype == torch.float64 for p in m.parameters())
        x = _example_input(name, m, torch.float64)
        _assert_same_outputs(name, r, m, x)
        m.float()
        assert all(p.dtype == torch.float32 for p in m.parameters())
        m(*_example_input(name, m))
    half = copy.deepcopy(mod).half()
    assert all(p.dtype == torch.float16 for p in half.parameters())
    half(*_example_input(name, half, torch.float16))
    bf = copy.deepcopy(mod).to(torch.bfloat16)
    bf(*_example_input(name, bf, torch.bfloat16))


@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS[::2], ids=config_ids[::2])
def test_torch_save_load_weights_only(name, args, kwargs, tmp_path):
    ref, mod = build_pair(name, args, kwargs)
    torch.save(mod.state_dict(), tmp_path / "fastrnn.pt")
    torch.save(ref.state_dict(), tmp_path / "torch.pt")
    from_fast = torch.load(tmp_path / "fastrnn.pt", weights_only=True)
    from_torch_sd = torch.load(tmp_path / "torch.pt", weights_only=True)
    ref2, mod2 = build_pair(name, args, kwargs)
    ref2.load_state_dict(from_fast)
    mod2.load_state_dict(from_torch_sd)
    for (n, p), (_, q) in zip(ref2.state_dict().items(), mod.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    for (n, p), (_, q) in zip(mod2.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("clone", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize(("name", "args", "kwargs"), CONFIGS[::2], ids=config_ids[::2])
def test_module_copies(name, args, kwargs, clone, tmp_path):
    _, mod = build_pair(name, args, kwargs, backend="reference")
    mod.eval()
    if clone == "deepcopy":
        other = copy.deepcopy(mod)
    elif clone == "pickle":
        other = pickle.loads(pickle.dumps(mod))
    else:
        torch.save(mod, tmp_path / "m.pt")
        other = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(other) is type(mod) and repr(other) == repr(mod) and other.backend == "reference"
    for (n, p), (_, q) in zip(other.named_parameters(), mod.named_parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), n
    _assert_same_outputs(name, mod, other, _example_input(name, mod), exact=True)
    with torch.no_grad():
        next(other.parameters()).add_(1)  # the copy owns its parameters
    assert not torch.equal(next(other.parameters()), next(mod.parameters()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_replacing_a_parameter_is_used_by_forward(backend):
    """torch.nn tracks `m.weight_hh_l0 = nn.Parameter(...)`; so must fastrnn (no stale flat-weight cache)."""
    ref, mod = build_pair("LSTM", (3, 5), dict(num_layers=2))
    mod.load_state_dict(ref.state_dict())
    mod.backend = backend
    new = torch.nn.Parameter(torch.randn(20, 5))
    ref.weight_hh_l1 = new
    mod.weight_hh_l1 = torch.nn.Parameter(new.detach().clone())
    x = torch.randn(4, 2, 3)
    _assert_same_outputs("LSTM", ref, mod, (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_call_with_substituted_parameters(backend):
    ref, mod = build_pair("GRU", (3, 5), dict(num_layers=2, bidirectional=True), backend=None)
    mod.backend = backend
    params = {n: torch.randn_like(p) for n, p in ref.named_parameters()}
    x = torch.randn(4, 2, 3)
    out_ref = torch.func.functional_call(ref, params, (x,))
    out_mod = torch.func.functional_call(mod, params, (x,))
    assert_close("output", out_ref[0], out_mod[0])
    assert_close("h_n", out_ref[1], out_mod[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_like_torch(mode, backend):
    case = Case(mode=mode, B=0, L=2, bidir=True, hx=False)
    ref = torch_module(case)
    mod = fastrnn.from_torch(ref, backend=backend)
    inp = make_inputs(case)
    compare(run(ref, case, clone_inputs(inp)), run(mod, case, clone_inputs(inp)), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_and_inference_mode(backend):
    case = Case(mode="lstm", L=2, packed="unsorted", bidir=True)
    ref = torch_module(case)
    mod = fastrnn.from_torch(ref, backend=backend)
    inp = make_inputs(case)
    with torch.no_grad():
        expected = run(ref, case, inp, backward=False)
        got = run(mod, case, inp, backward=False)
    assert not got["output"].requires_grad
    compare(expected, got, torch.float64)
    with torch.inference_mode():
        got = run(mod, case, inp, backward=False)
    compare(expected, got, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_frozen_parameters_and_inputs_without_grad(mode, backend):
    """Only some leaves require grad (frozen layer, constant input): the same leaves get the same grads."""
    case = Case(mode=mode, L=2, bidir=True, packed="unsorted")
    ref = torch_module(case)
    mod = fastrnn.from_torch(ref, backend=backend)
    for m in (ref, mod):
        m.weight_ih_l0.requires_grad_(False)
        m.weight_hh_l1_reverse.requires_grad_(False)
    inp = make_inputs(case)
    got, want = clone_inputs(inp), clone_inputs(inp)
    got.x.requires_grad_(False)
    want.x.requires_grad_(False)
    compare(run(ref, case, want), run(mod, case, got), torch.float64)
    assert mod.weight_ih_l0.grad is None and mod.weight_hh_l1_reverse.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_parametrized_weight_like_torch(backend):
    """torch.nn.utils.parametrize works on torch.nn.LSTM; the forward of fastrnn must see the parametrization."""
    from torch.nn.utils import parametrize

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    case = Case(mode="lstm", L=2, bidir=True)
    ref = torch_module(case)
    mod = fastrnn.from_torch(ref, backend=backend)
    for m in (ref, mod):
        parametrize.register_parametrization(m, "weight_hh_l0", Scale())
    inp = make_inputs(case)
    expected, got = run(ref, case, clone_inputs(inp)), run(mod, case, clone_inputs(inp))
    expected = {k.replace("weight_hh_l0", "weight_hh_l0.original"): v for k, v in expected.items()}
    got = {k.replace("weight_hh_l0", "weight_hh_l0.original"): v for k, v in got.items()}
    compare(expected, got, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_cpu_autocast_values(mode, backend):
    """Under CPU autocast (bf16) fastrnn runs and stays within bf16 tolerance of torch.nn."""
    case = Case(mode=mode, L=2)
    ref = torch_module(case, torch.float32)
    mod = fastrnn.from_torch(ref, backend=backend)
    x = torch.randn(case.T, case.B, case.I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = ref(x), mod(x)
    want = [want[0], *(want[1] if mode == "lstm" else (want[1],))]
    got = [got[0], *(got[1] if mode == "lstm" else (got[1],))]
    for name, w, g in zip(("output", "h_n", "c_n"), want, got, strict=False):
        assert_close(name, w.float(), g.float(), dtype=torch.bfloat16)
        if backend == "auto":
            assert g.dtype == w.dtype, name


@pytest.mark.parametrize("mode", [
    pytest.param(m, marks=pytest.mark.xfail(
        strict=True, reason="torch.nn's CPU LSTM/RNN return bf16 under autocast (their oneDNN/matmul paths "
                            "autocast); the reference loop computes in fp32 and returns the input's dtype"))
    if m in ("lstm", "rnn_tanh", "rnn_relu") else m for m in MODES])
def test_cpu_autocast_output_dtype_reference(mode):
    case = Case(mode=mode, L=2)
    ref = torch_module(case, torch.float32)
    mod = fastrnn.from_torch(ref, backend="reference")
    x = torch.randn(case.T, case.B, case.I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mod(x)[0].dtype == ref(x)[0].dtype


def _random_cases(n: int, seed: int) -> list[Case]:
    """Seeded random points of the full grid, beyond the hand-picked ones (fixed at collection time)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        mode = rng.choice(MODES)
        H = rng.choice([1, 2, 5, 8, 13])  # noqa: N806
        packed = rng.choice([None, "sorted", "unsorted"])
        cases.append(Case(
            mode=mode, I=rng.choice([1, 3, 6]), H=H, L=rng.choice([1, 2, 3]), bidir=rng.random() < 0.5,
            bias=rng.random() < 0.7, batch_first=rng.random() < 0.5, hx=rng.random() < 0.5,
            proj=rng.randrange(0, H) if mode == "lstm" and H > 1 and rng.random() < 0.5 else 0,
            packed=packed, short=packed is not None and rng.random() < 0.3,
            unbatched=packed is None and rng.random() < 0.25, T=rng.choice([1, 2, 4, 7]), B=rng.choice([1, 2, 5]),
        ))
    return cases


RANDOM_CASES = _random_cases(40, seed=2024)


@pytest.mark.parametrize("case", RANDOM_CASES, ids=[str(c) for c in RANDOM_CASES])
def test_parity_random_configs_fp64(case):
    check_module_parity(case, "reference", torch.float64)


@pytest.mark.parametrize("case", RANDOM_CASES[::2], ids=[str(c) for c in RANDOM_CASES[::2]])
def test_parity_random_configs_fp32(case):
    check_module_parity(case, "reference", torch.float32)


@needs_triton
@pytest.mark.parametrize("case", RANDOM_CASES[:10], ids=[str(c) for c in RANDOM_CASES[:10]])
def test_parity_random_configs_triton_fp32(case, triton_calls):
    check_module_parity(case, "triton", torch.float32, device=triton_device())
    assert len(triton_calls) == case.L * case.directions


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_packed_unsorted_with_larger_hx_batch_like_torch(mode, backend):
    """torch.nn permutes hx before checking it, so a packed unsorted batch accepts a larger hx (first rows)."""
    case = Case(mode=mode, packed="unsorted", L=2, bidir=True)
    ref = torch_module(case)
    mod = fastrnn.from_torch(ref, backend=backend)
    inp = make_inputs(case)
    big = dataclasses.replace(case, B=case.B + 2)
    extra = make_inputs(big, seed=9)
    inp.h0 = torch.cat([inp.h0, extra.h0[:, :2]], dim=1)
    if inp.c0 is not None:
        inp.c0 = torch.cat([inp.c0, extra.c0[:, :2]], dim=1)
    compare(run(ref, case, clone_inputs(inp)), run(mod, case, clone_inputs(inp)), torch.float64)
