"""Second-order gradients (double backward) of every cell on every backend, against torch.nn and fp64.

Gradient-penalty style: ``g = autograd.grad(loss, leaves, create_graph=True)`` with a loss that is quadratic
in the outputs and final states (so the upstream gradients reaching the recurrence carry a graph of their
own), then ``(sum_i g_i * r_i).backward()`` with random r_i. Compared: g and the second-order ``.grad`` of the
input, h0, c0 and every parameter. The Triton backend (fp32: its fp64 inputs run the reference loop) is
compared with torch.nn's CPU path in fp32 and with fastrnn's reference backend in fp64; the fp64-capable
backends (reference, torch, auto) with torch.nn in fp64; Triton fp16/bf16 by relative error against the fp64
reference. ``gradgradcheck`` covers the fp64 paths, and
``fastrnn.ops.recurrence`` itself in fp64 (its forward runs the kernels; its create_graph backward is the
differentiable recompute of fastrnn/ops/_second_order.py, which computes in fp64 for fp64).
"""

from __future__ import annotations

import pytest
import torch
from helpers import REL_TOL, assert_close, rel_error
from parity import (
    MODES,
    Case,
    clone_inputs,
    forward,
    has_triton_recurrence,
    make_inputs,
    one_thread,
    torch_module,
    triton_device,
)
from recurrence_check import make_inputs as op_inputs
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

needs_triton = pytest.mark.skipif(not has_triton_recurrence(), reason="no fastrnn.ops")
BACKENDS_FP64 = ["reference", "torch", "auto"]


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def _random(gen: torch.Generator, t: torch.Tensor) -> torch.Tensor:
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype=t.dtype, device=t.device)


def _penalty_grads(outputs, names, leaves, seed: int = 7) -> dict:
    """First-order gradients with create_graph, then the backward of a random linear penalty on them."""
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * _random(gen, o)).sum() + (o.square() * _random(gen, o)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    penalty = sum((g * _random(gen, g)).sum() for g in grads)
    penalty.backward()
    res = {f"grad {n}": g.detach() for n, g in zip(names, grads, strict=True)}
    res |= {f"grad2 {n}": t.grad for n, t in zip(names, leaves, strict=True)}
    return res


def module_second_order(module, case: Case, inp, wrt: str = "all", loss_on: str = "both") -> dict:
    """``wrt``: which leaves require grad ("all", "inputs": x/h0/c0 only, "params": parameters only);
    ``loss_on``: what the loss reads ("both", "output": the final states get no gradient, "state": the
    output gets none)."""
    params = list(module.named_parameters())
    for _, p in params:
        p.requires_grad_(wrt != "inputs")
    states = [("x", inp.x), ("h0", inp.h0), ("c0", inp.c0)]
    for _, t in states:
        if t is not None:
            t.requires_grad_(wrt != "params")
    out, _, h_n, c_n = forward(module, case, inp)
    outputs = {"both": [out, h_n, c_n], "output": [out], "state": [h_n, c_n]}[loss_on]
    named = ([(n, t) for n, t in states if t is not None] if wrt != "params" else []) + \
        ([(n, p) for n, p in params] if wrt != "inputs" else [])
    return _penalty_grads([o for o in outputs if o is not None], [n for n, _ in named], [t for _, t in named])


def compare(ref: dict, got: dict, dtype: torch.dtype, label: str, scale: float = 1.0) -> None:
    assert set(ref) == set(got), f"{label}results differ: {sorted(set(ref) ^ set(got))}"
    for name in ref:
        assert got[name] is not None, f"{label}{name}: no gradient"
        assert got[name].dtype == dtype, f"{label}{name}: dtype {got[name].dtype}, expected {dtype}"
        assert_close(label + name, ref[name], got[name], dtype=dtype, scale=scale)


def check_second_order(case: Case, backend: str, dtype: torch.dtype, wrt: str = "all", loss_on: str = "both",
                       device="cpu") -> None:
    """fastrnn ``backend`` in ``dtype`` (weights copied from torch.nn) against torch.nn's CPU path in the same
    dtype, and for dtypes below fp64 also against fastrnn's fp64 reference backend on the same values."""
    ref = torch_module(case, dtype)
    inp = make_inputs(case, dtype)
    expected = module_second_order(ref, case, clone_inputs(inp), wrt, loss_on)
    mod = fastrnn.from_torch(ref, backend=backend).to(device)
    got = module_second_order(mod, case, clone_inputs(make_inputs(case, dtype, device)), wrt, loss_on)
    compare(expected, got, dtype, "vs torch.nn same dtype: ")
    if dtype != torch.float64:
        oracle = fastrnn.from_torch(torch_module(case, torch.float64), backend="reference")
        oracle.load_state_dict(ref.state_dict())
        want = module_second_order(oracle, case, clone_inputs(inp, torch.float64), wrt, loss_on)
        compare(want, got, dtype, "vs fp64 reference: ")


# Every cell kind packed (unsorted), stacked and bidirectional; proj_size; then the other layouts.
CASES = [Case(mode=m, I=3, H=5, L=2, bidir=True, packed="unsorted", T=3, B=3) for m in MODES] + [
    Case(mode="lstm", I=3, H=5, proj=2, bidir=True, packed="sorted", T=3, B=2),
    Case(mode="lstm", I=2, H=4, proj=3, unbatched=True, T=2),
    Case(mode="gru", I=3, H=4, batch_first=True, hx=False, T=2, B=2),
    Case(mode="rnn_tanh", I=2, H=3, T=1, B=1),
    Case(mode="rnn_relu", I=3, H=4, bidir=True, batch_first=True, T=3, B=2, bias=False),
]
# Partial requires_grad and partial upstream gradients: one small stacked bidirectional case per cell kind.
VARIANTS = [("inputs", "output"), ("params", "state"), ("all", "state")]
VARIANT_CASES = [Case(mode=m, I=2, H=3, L=2, bidir=True, T=2, B=2) for m in MODES] + [
    Case(mode="lstm", I=2, H=3, proj=2, bidir=True, T=2, B=2),
]


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_module_second_order_triton(case):
    before = sum(fastrnn.ops.launch_counts.values())
    check_second_order(case, "triton", torch.float32, device=triton_device())
    assert sum(fastrnn.ops.launch_counts.values()) > before, "the Triton kernels did not run"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES[:5], ids=[str(c) for c in CASES[:5]])
def test_module_second_order_triton_low_precision(case, dtype):
    """fp16/bf16: every gradient in its input's dtype, within REL_TOL of the fp64 reference on the same
    (rounded) weights and inputs."""
    ref = torch_module(case, dtype)
    got = module_second_order(fastrnn.from_torch(ref, backend="triton").to(triton_device()), case,
                              clone_inputs(make_inputs(case, dtype, triton_device())))
    oracle = fastrnn.from_torch(torch_module(case, torch.float64), backend="reference")
    oracle.load_state_dict(ref.state_dict())
    want = module_second_order(oracle, case, clone_inputs(make_inputs(case, dtype), torch.float64))
    assert set(want) == set(got)
    assert {n: g.dtype for n, g in got.items() if g.dtype != dtype} == {}
    errors = {n: rel_error(want[n], got[n]) for n in want}
    assert not {n: e for n, e in errors.items() if not e < REL_TOL[dtype]}, errors


@needs_triton
@pytest.mark.parametrize(("wrt", "loss_on"), VARIANTS, ids=[f"{w}-loss_on_{o}" for w, o in VARIANTS])
@pytest.mark.parametrize("case", VARIANT_CASES, ids=[str(c) for c in VARIANT_CASES])
def test_module_second_order_triton_partial(case, wrt, loss_on):
    check_second_order(case, "triton", torch.float32, wrt, loss_on, device=triton_device())


@pytest.mark.parametrize("backend", BACKENDS_FP64)
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_module_second_order_fp64(case, backend):
    check_second_order(case, backend, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS_FP64)
@pytest.mark.parametrize(("wrt", "loss_on"), VARIANTS, ids=[f"{w}-loss_on_{o}" for w, o in VARIANTS])
@pytest.mark.parametrize("case", VARIANT_CASES, ids=[str(c) for c in VARIANT_CASES])
def test_module_second_order_fp64_partial(case, wrt, loss_on, backend):
    check_second_order(case, backend, torch.float64, wrt, loss_on)


@pytest.mark.parametrize("backend", ["triton", *BACKENDS_FP64])
@pytest.mark.parametrize("mode", MODES)
def test_double_backward_through_the_upstream_gradient(mode, backend):
    """grad_outputs that require grad (a Hessian-vector or Jacobian-transpose trick): the gradient of the
    first-order result reaches the upstream gradient v itself, as well as x and the weights."""
    if backend == "triton" and not has_triton_recurrence():
        pytest.skip("no fastrnn.ops")
    dtype = torch.float32 if backend == "triton" else torch.float64
    device = triton_device() if backend == "triton" else torch.device("cpu")
    case = Case(mode=mode, I=3, H=4, bidir=True, packed="unsorted", T=3, B=3)
    ref = torch_module(case, dtype)

    def go(module, device="cpu"):
        leaf = clone_inputs(make_inputs(case, dtype, device))
        out, _, h_n, _ = forward(module, case, leaf)
        gen = torch.Generator().manual_seed(3)
        v = _random(gen, out).requires_grad_()
        (gx,) = torch.autograd.grad(out, leaf.x, grad_outputs=v, create_graph=True)
        ((gx * _random(gen, gx)).sum() + (h_n.square() * _random(gen, h_n)).sum()).backward()
        res = {"vjp": gx.detach(), "grad2 v": v.grad, "grad2 x": leaf.x.grad, "grad2 h0": leaf.h0.grad}
        return res | {f"grad2 {n}": p.grad for n, p in module.named_parameters()}

    compare(go(ref), go(fastrnn.from_torch(ref, backend=backend).to(device), device), dtype, "vs torch.nn: ")


CELL_CLASSES = {
    "lstm": (torch.nn.LSTMCell, fastrnn.LSTMCell, {}),
    "gru": (torch.nn.GRUCell, fastrnn.GRUCell, {}),
    "rnn_tanh": (torch.nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNNCell, fastrnn.RNNCell, {"nonlinearity": "relu"}),
}


def cell_second_order(module, mode: str, dtype: torch.dtype, hx_given: bool = True, device="cpu") -> dict:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
    states = [torch.randn(3, 5, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
              for _ in range(2 if mode == "lstm" else 1)] if hx_given else []
    hx = None if not hx_given else (tuple(states) if mode == "lstm" else states[0])
    out = module(x, hx)
    outputs = list(out) if mode == "lstm" else [out]
    params = list(module.named_parameters())
    names = ["x", *(f"hx{i}" for i in range(len(states))), *(n for n, _ in params)]
    return _penalty_grads(outputs, names, [x, *states, *(p for _, p in params)])


@pytest.mark.parametrize("hx_given", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("backend", ["triton", *BACKENDS_FP64])
@pytest.mark.parametrize("mode", list(CELL_CLASSES))
def test_cell_second_order(mode, backend, hx_given):
    if backend == "triton" and not has_triton_recurrence():
        pytest.skip("no fastrnn.ops")
    torch_cls, _, extra = CELL_CLASSES[mode]
    dtype = torch.float32 if backend == "triton" else torch.float64
    device = triton_device() if backend == "triton" else torch.device("cpu")
    ref = torch_cls(4, 5, dtype=dtype, **extra)
    oracle = fastrnn.from_torch(ref, backend="reference").double()
    got = cell_second_order(fastrnn.from_torch(ref, backend=backend).to(device), mode, dtype, hx_given, device)
    compare(cell_second_order(ref, mode, dtype, hx_given), got, dtype, "vs torch.nn: ")
    if dtype != torch.float64:
        compare(cell_second_order(oracle, mode, torch.float64, hx_given), got, dtype, "vs fp64 reference: ")


@needs_triton
def test_third_order_triton():
    """The recompute's graph is plain autograd, so differentiating it again works too."""
    ref = torch.nn.GRU(2, 3)
    x0 = torch.randn(3, 2, 2)
    results = []
    for module, device in ((ref, "cpu"), (fastrnn.from_torch(ref, backend="triton").to(triton_device()),
                                           triton_device())):
        x = x0.to(device).requires_grad_()
        (g,) = torch.autograd.grad(module(x)[0].pow(3).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
        g2.square().sum().backward()
        results.append({"grad2": g2.detach(), "grad3 x": x.grad, "grad3 weight_hh": module.weight_hh_l0.grad})
    compare(*results, torch.float32, "vs torch.nn: ")


# ---------------------------------------------------------------------------------------------------------
# gradgradcheck (fp64)
# ---------------------------------------------------------------------------------------------------------

GGC_CASES = [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)]
ggc_ids = [m + (f"-proj={p}" if p else "") for m, p in GGC_CASES]


@pytest.mark.parametrize("backend", BACKENDS_FP64)
@pytest.mark.parametrize(("mode", "proj"), GGC_CASES, ids=ggc_ids)
def test_gradgradcheck_functional(mode, proj, backend):
    """fastrnn.functional.rnn over a packed (unsorted) input, both directions, every weight and both states."""
    H, I, T = 3, 2, 3  # noqa: E741
    gen = torch.Generator().manual_seed(0)
    G = {"lstm": 4, "gru": 3}.get(mode, 1) * H
    P = proj or H

    def r(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.7).requires_grad_()

    x = r(T, 2, I)
    states = [r(2, 2, P)] + ([r(2, 2, H)] if mode == "lstm" else [])
    weights = [(r(G, I), r(G, P), r(G), r(G), r(P, H) if proj else None) for _ in range(2)]
    flat = [w for layer in weights for w in layer if w is not None]

    def fn(x, *args):
        hx = args[:len(states)]
        it = iter(args[len(states):])
        ws = [tuple(None if w is None else next(it) for w in layer) for layer in weights]
        packed = pack_padded_sequence(x, [1, 3], enforce_sorted=False)
        out, hidden = fastrnn.functional.rnn(mode, packed, tuple(hx) if mode == "lstm" else hx[0], ws,
                                             bidirectional=True, backend=backend)
        assert isinstance(out, PackedSequence)
        return (out.data, *hidden) if mode == "lstm" else (out.data, hidden)

    assert torch.autograd.gradgradcheck(fn, (x, *states, *flat), fast_mode=True)


@needs_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize(("mode", "proj"), GGC_CASES, ids=ggc_ids)
def test_gradgradcheck_triton_op(mode, proj, reverse):
    """fastrnn.ops.recurrence in fp64 with lengths: the forward runs the kernels; gradgradcheck differentiates
    the create_graph backward (the recompute, exact in fp64), so it checks its wiring to every input."""
    x = {n: None if t is None else t.detach().double().requires_grad_()
         for n, t in op_inputs(mode, 3, 2, 3, proj).items()}
    lengths = torch.tensor([3, 1], device=triton_device())
    names = [n for n, t in x.items() if t is not None]

    def fn(*args):
        kwargs = dict.fromkeys(x) | dict(zip(names, args, strict=True))
        y, h_n, c_n = fastrnn.ops.recurrence(mode, **kwargs, lengths=lengths, reverse=reverse)
        return (y, h_n) if c_n is None else (y, h_n, c_n)

    before = sum(fastrnn.ops.launch_counts.values())
    assert torch.autograd.gradgradcheck(fn, [x[n] for n in names], fast_mode=True)
    assert sum(fastrnn.ops.launch_counts.values()) > before


# ---------------------------------------------------------------------------------------------------------
# Mechanism: kernels for first order, recompute only under create_graph, the opt-out
# ---------------------------------------------------------------------------------------------------------

@needs_triton
def test_first_order_runs_the_backward_kernels_and_create_graph_does_not():
    module = fastrnn.LSTM(3, 4, bidirectional=True, backend="triton").to(triton_device())
    x = torch.randn(3, 2, 3, device=triton_device(), requires_grad=True)
    counts = fastrnn.ops.launch_counts
    counts.clear()
    module(x)[0].sum().backward()
    assert counts == {"lstm_fwd": 2, "lstm_bwd": 2}
    counts.clear()
    torch.autograd.grad(module(x)[0].square().sum(), x, create_graph=True)
    assert counts == {"lstm_fwd": 2}


@needs_triton
def test_opt_out_keeps_first_order_and_refuses_second_order(monkeypatch):
    """FASTRNN_DOUBLE_BACKWARD=0: the forward keeps no extra inputs; first-order gradients are unchanged, and a
    backward through a create_graph gradient fails loudly (PyTorch's own error) instead of going wrong."""
    case = Case(mode="gru", I=3, H=4, T=3, B=2, packed="unsorted")
    ref = torch_module(case, torch.float32)
    mod = fastrnn.from_torch(ref, backend="triton").to(triton_device())
    monkeypatch.setenv("FASTRNN_DOUBLE_BACKWARD", "0")
    grads = []
    for module, device in ((ref, "cpu"), (mod, triton_device())):
        leaf = clone_inputs(make_inputs(case, torch.float32, device))
        forward(module, case, leaf)[0].square().sum().backward()
        grads.append(leaf.x.grad)
    assert_close("grad input", *grads)
    leaf = clone_inputs(make_inputs(case, torch.float32, triton_device()))
    (g,) = torch.autograd.grad(forward(mod, case, leaf)[0].square().sum(), leaf.x, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd formula"):
        g.sum().backward()


def test_compiled_first_order_unchanged_for_a_module_trained_with_second_order():
    """A module that has been through a double backward still compiles fullgraph, and its first-order
    gradients match eager (the create_graph branch is not traced: the joint graph traces with grad off)."""
    torch._dynamo.reset()
    triton = has_triton_recurrence()
    device = triton_device() if triton else torch.device("cpu")
    module = fastrnn.GRU(3, 4, backend="triton" if triton else None, device=device)
    x = torch.randn(3, 2, 3, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(module(x)[0].square().sum(), x, create_graph=True)
    g.square().sum().backward()
    eager = torch.autograd.grad(module(x)[0].square().sum(), [x, *module.parameters()])
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x)[0].square().sum(), [x, *module.parameters()])
    for i, (e, o) in enumerate(zip(eager, got, strict=True)):
        assert_close(f"grad {i}", e, o)
