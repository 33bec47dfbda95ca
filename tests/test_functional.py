"""fastrnn.functional: the documented functional API equals the modules and torch's own operators."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from parity import MODES, Case, make_inputs, one_thread
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import functional as Fr


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


BACKENDS = ["reference", "auto"]
WRAPPERS = {"lstm": Fr.lstm, "gru": Fr.gru, "rnn_tanh": Fr.rnn_tanh, "rnn_relu": Fr.rnn_relu}
CELL_WRAPPERS = {"lstm": Fr.lstm_cell, "gru": Fr.gru_cell, "rnn_tanh": Fr.rnn_tanh_cell,
                 "rnn_relu": Fr.rnn_relu_cell}
TORCH_OPS = {"lstm": torch.lstm, "gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}

CASES = [Case(mode=m, L=2, bidir=True) for m in MODES] + [
    Case(mode=m, packed="unsorted", batch_first=True, L=2) for m in MODES
] + [
    Case(mode="lstm", proj=3, bidir=True, packed="unsorted", L=2),
    Case(mode="gru", bias=False, batch_first=True, T=1, B=1),
]


def module_for(case, backend):
    kw = dict(num_layers=case.L, bias=case.bias, batch_first=case.batch_first, bidirectional=case.bidir,
              dtype=torch.float64, backend=backend)
    if case.mode == "lstm":
        return fastrnn.LSTM(case.I, case.H, proj_size=case.proj, **kw)
    if case.mode == "gru":
        return fastrnn.GRU(case.I, case.H, **kw)
    return fastrnn.RNN(case.I, case.H, nonlinearity=case.mode[4:], **kw)


def call_inputs(case):
    inp = make_inputs(case)
    x = inp.x
    if case.packed:
        x = pack_padded_sequence(inp.x, inp.lengths, batch_first=case.batch_first, enforce_sorted=False)
    hx = (inp.h0, inp.c0) if case.mode == "lstm" else inp.h0
    return x, hx


def flat(result):
    out, hidden = result
    out = out.data if isinstance(out, PackedSequence) else out
    return [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_functional_equals_module(case, backend):
    mod = module_for(case, backend)
    x, hx = call_inputs(case)
    kw = dict(num_layers=case.L, bidirectional=case.bidir, batch_first=case.batch_first, training=False,
              backend=backend)
    want = flat(mod.eval()(x, hx))
    for got in (WRAPPERS[case.mode](x, hx, mod.layer_weights(), **kw),
                Fr.rnn(case.mode, x, hx, mod.layer_weights(), **kw)):
        if case.packed:
            assert isinstance(got[0], PackedSequence)
            assert torch.equal(got[0].batch_sizes, x.batch_sizes)
            assert torch.equal(got[0].unsorted_indices, x.unsorted_indices)
        for i, (g, w) in enumerate(zip(flat(got), want, strict=True)):
            assert_close(f"result {i}", w, g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_functional_equals_torch_operator(case, backend):
    """rnn() with torch.nn's flat weight order is torch.lstm / torch.gru / torch.rnn_* itself."""
    mod = module_for(case, backend)
    x, hx = call_inputs(case)
    weights = mod.layer_weights()
    flat_weights = [w for layer in weights for w in layer if w is not None]
    assert flat_weights == [p for _, p in mod.named_parameters()], "layer_weights() must follow torch.nn's order"
    hidden = hx if case.mode == "lstm" else (hx,)
    if case.packed:
        hidden = tuple(h.index_select(1, x.sorted_indices) for h in hidden)
    hidden = hidden if case.mode == "lstm" else hidden[0]  # the non-LSTM operators take h0 itself
    if case.packed:
        want = TORCH_OPS[case.mode](x.data, x.batch_sizes, hidden, flat_weights, case.bias, case.L, 0.0, False,
                                    case.bidir)
        want = [want[0], *(h.index_select(1, x.unsorted_indices) for h in want[1:])]
    else:
        want = TORCH_OPS[case.mode](x, hidden, flat_weights, case.bias, case.L, 0.0, False, case.bidir,
                                    case.batch_first)
    got = flat(Fr.rnn(case.mode, x, hx, weights, num_layers=case.L, bidirectional=case.bidir,
                      batch_first=case.batch_first, backend=backend))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close(f"result {i}", w, g)


def test_layer_weights_format():
    lstm = fastrnn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    weights = lstm.layer_weights()
    assert len(weights) == 4 and all(len(w) == 5 for w in weights)
    w_ih, w_hh, b_ih, b_hh, w_hr = weights[3]  # layer 1, reverse
    assert w_ih is lstm.weight_ih_l1_reverse and w_hr is lstm.weight_hr_l1_reverse
    assert w_ih.shape == (24, 4) and w_hh.shape == (24, 2) and b_ih.shape == b_hh.shape == (24,)
    gru = fastrnn.GRU(3, 5, bias=False)
    assert gru.layer_weights() == [(gru.weight_ih_l0, gru.weight_hh_l0, None, None, None)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_functional_gradients_equal_module(mode, backend):
    case = Case(mode=mode, L=2, bidir=True, packed="unsorted")
    mod = module_for(case, backend)
    x, hx = call_inputs(case)
    g1 = torch.autograd.grad(sum(t.sum() for t in flat(mod(x, hx))), list(mod.parameters()))
    g2 = torch.autograd.grad(
        sum(t.sum() for t in flat(Fr.rnn(mode, x, hx, mod.layer_weights(), num_layers=2, bidirectional=True,
                                         backend=backend))), list(mod.parameters()))
    for (name, _), a, b in zip(mod.named_parameters(), g1, g2, strict=True):
        assert_close(name, a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_dropout_only_in_training(backend):
    mod = module_for(Case(mode="gru", L=3), backend)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    h0 = torch.zeros(3, 3, 7, dtype=torch.float64)
    kw = dict(num_layers=3, dropout=0.5, backend=backend)
    evaluated = Fr.gru(x, h0, mod.layer_weights(), training=False, **kw)
    assert_close("eval", mod.eval()(x, h0)[0], evaluated[0])
    trained = Fr.gru(x, h0, mod.layer_weights(), training=True, **kw)
    assert not torch.allclose(trained[0], evaluated[0])
    assert_close("layer 0 h_n", evaluated[1][0], trained[1][0])


CELL_TORCH = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell,
              "rnn_relu": torch.rnn_relu_cell}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_cell_functions_equal_torch_cells_and_modules(mode, backend, bias):
    gates = {"lstm": 4, "gru": 3}.get(mode, 1)
    gen = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    x, h, c = r(3, 4), r(3, 5), r(3, 5)
    w_ih, w_hh = r(gates * 5, 4), r(gates * 5, 5)
    b_ih, b_hh = (r(gates * 5), r(gates * 5)) if bias else (None, None)
    hx = (h, c) if mode == "lstm" else h
    want = CELL_TORCH[mode](x, hx, w_ih, w_hh, b_ih, b_hh)
    for got in (CELL_WRAPPERS[mode](x, hx, w_ih, w_hh, b_ih, b_hh, backend=backend),
                Fr.cell(mode, x, hx, w_ih, w_hh, b_ih, b_hh, backend=backend)):
        for i, (g, w) in enumerate(zip(got if mode == "lstm" else (got,), want if mode == "lstm" else (want,),
                                       strict=True)):
            assert_close(f"state {i}", w, g)
    cls = {"lstm": fastrnn.LSTMCell, "gru": fastrnn.GRUCell}.get(mode, fastrnn.RNNCell)
    extra = {"nonlinearity": mode[4:]} if mode.startswith("rnn") else {}
    cell = cls(4, 5, bias=bias, dtype=torch.float64, backend=backend, **extra)
    with torch.no_grad():
        for p, v in zip(cell.parameters(), (w_ih, w_hh, b_ih, b_hh), strict=False):
            p.copy_(v)
    out = cell(x, hx)
    for i, (g, w) in enumerate(zip(out if mode == "lstm" else (out,), want if mode == "lstm" else (want,),
                                   strict=True)):
        assert_close(f"module state {i}", w, g)
