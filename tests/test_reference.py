"""fastrnn.reference: fp64 gradcheck of the step loop, its length/reverse semantics, its precision contract."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from parity import one_thread
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import reference


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


T, B, H = 3, 2, 3
MODES = reference.MODES


def recurrence_inputs(mode, proj=0, gru_bias=True, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    G = reference.GATES[mode] * H
    P = proj or H

    def r(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.7).to(dtype).requires_grad_()

    gx = r(T, B, G)
    h0 = r(B, P)
    c0 = r(B, H) if mode == "lstm" else None
    w_hh = r(G, P)
    b_hh = r(G) if mode == "gru" and gru_bias else None
    w_hr = r(P, H) if proj else None
    return gx, h0, c0, w_hh, b_hh, w_hr


VARIANTS = [
    dict(lengths=None, reverse=False),
    dict(lengths=None, reverse=True),
    dict(lengths=[3, 1], reverse=False),
    dict(lengths=[2, 3], reverse=True),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"lengths={v['lengths']}-reverse={v['reverse']}")
@pytest.mark.parametrize(("mode", "extra"), [(m, {}) for m in MODES] + [("lstm", {"proj": 2}),
                                                                        ("gru", {"gru_bias": False})],
                         ids=[*MODES, "lstm-proj", "gru-no-bias"])
def test_recurrence_gradcheck(mode, extra, variant):
    gx, h0, c0, w_hh, b_hh, w_hr = recurrence_inputs(mode, **extra)
    lengths = None if variant["lengths"] is None else torch.tensor(variant["lengths"])
    tensors = [t for t in (gx, h0, c0, w_hh, b_hh, w_hr) if t is not None]

    def fn(*args):
        it = iter(args)
        g, h, c, w, b, wr = (None if t is None else next(it) for t in (gx, h0, c0, w_hh, b_hh, w_hr))
        y, h_n, c_n = reference.recurrence(mode, g, h, c, w, b, wr, lengths, variant["reverse"])
        return (y, h_n) if c_n is None else (y, h_n, c_n)

    assert torch.autograd.gradcheck(fn, tensors)
    if mode in ("lstm", "gru") and variant["lengths"] is not None:
        assert torch.autograd.gradgradcheck(fn, tensors)


MODULE_CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=2, bidirectional=True, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("RNN", dict(nonlinearity="tanh", bidirectional=True)),
    ("RNN", dict(nonlinearity="relu", num_layers=2, bias=False)),
]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize(("name", "kwargs"), MODULE_CASES, ids=[f"{n}-{k}" for n, k in MODULE_CASES])
def test_reference_module_gradcheck(name, kwargs, packed):
    """gradcheck through a backend='reference' module: input, h0, c0 and every parameter."""
    mod = getattr(fastrnn, name)(2, H, dtype=torch.float64, backend="reference", **kwargs)
    names = [n for n, _ in mod.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in mod.parameters()]
    D = 2 if mod.bidirectional else 1
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, 2, generator=gen, dtype=torch.float64) if mod.batch_first else \
        torch.randn(T, B, 2, generator=gen, dtype=torch.float64)
    h0 = torch.randn(mod.num_layers * D, B, mod.proj_size or H, generator=gen, dtype=torch.float64)
    states = [h0] + ([torch.randn(mod.num_layers * D, B, H, generator=gen, dtype=torch.float64)]
                     if name == "LSTM" else [])
    leaves = [t.requires_grad_() for t in (x, *states)]

    def fn(x, *rest):
        st, ps = rest[: len(states)], rest[len(states):]
        inp = pack_padded_sequence(x, [1, T], batch_first=mod.batch_first, enforce_sorted=False) if packed else x
        out, hidden = torch.func.functional_call(mod, dict(zip(names, ps, strict=True)),
                                                 (inp, tuple(st) if name == "LSTM" else st[0]))
        out = out.data if packed else out
        return (out, *hidden) if name == "LSTM" else (out, hidden)

    assert torch.autograd.gradcheck(fn, (*leaves, *params))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_lengths_equal_running_each_sequence_alone(mode, reverse):
    """Masked steps: each sequence of a padded batch behaves as if run alone, truncated to its length."""
    gen = torch.Generator().manual_seed(2)
    T_, B_ = 5, 4
    G = reference.GATES[mode] * H
    gx = torch.randn(T_, B_, G, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B_, H, generator=gen, dtype=torch.float64)
    c0 = torch.randn(B_, H, generator=gen, dtype=torch.float64) if mode == "lstm" else None
    w_hh = torch.randn(G, H, generator=gen, dtype=torch.float64) * 0.5
    b_hh = torch.randn(G, generator=gen, dtype=torch.float64) if mode == "gru" else None
    lengths = torch.tensor([5, 1, 3, 4])
    y, h_n, c_n = reference.recurrence(mode, gx, h0, c0, w_hh, b_hh, None, lengths, reverse)
    for b, n in enumerate(lengths.tolist()):
        yb, hb, cb = reference.recurrence(mode, gx[:n, b:b + 1], h0[b:b + 1], None if c0 is None else c0[b:b + 1],
                                          w_hh, b_hh, None, None, reverse)
        assert_close(f"y[:, {b}]", yb[:, 0], y[:n, b])
        assert (y[n:, b] == 0).all(), "steps past the length must output zeros"
        assert_close(f"h_n[{b}]", hb[0], h_n[b])
        if c0 is not None:
            assert_close(f"c_n[{b}]", cb[0], c_n[b])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_computes_in_fp32_and_returns_input_dtype(mode, dtype):
    gx, h0, c0, w_hh, b_hh, w_hr = recurrence_inputs(mode, proj=2 if mode == "lstm" else 0, dtype=dtype)
    assert reference.compute_dtype(dtype) == torch.float32
    got = reference.recurrence(mode, gx, h0, c0, w_hh, b_hh, w_hr, torch.tensor([3, 2]), True)
    want = reference.recurrence(mode, *(None if t is None else t.double() for t in (gx, h0, c0, w_hh, b_hh, w_hr)),
                                torch.tensor([3, 2]), True)
    for name, g, w in zip(("y", "h_n", "c_n"), got, want, strict=True):
        if w is None:
            assert g is None
            continue
        assert g.dtype == dtype, name
        # one rounding of an fp32 result to the output dtype: within the dtype's tolerance of fp64
        assert_close(name, w, g)


def test_float64_stays_float64():
    assert reference.compute_dtype(torch.float64) == torch.float64
    gx, h0, c0, w_hh, _, _ = recurrence_inputs("lstm")
    y, h_n, c_n = reference.recurrence("lstm", gx, h0, c0, w_hh)
    assert y.dtype == h_n.dtype == c_n.dtype == torch.float64


def test_cell_formulas_match_torch_cells():
    """The single-step functions are torch's cell math (gx holding both biases except GRU's b_hn)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, 5, generator=gen, dtype=torch.float64)
    h = torch.randn(B, H, generator=gen, dtype=torch.float64)
    c = torch.randn(B, H, generator=gen, dtype=torch.float64)
    for mode, gates in reference.GATES.items():
        w_ih = torch.randn(gates * H, 5, generator=gen, dtype=torch.float64)
        w_hh = torch.randn(gates * H, H, generator=gen, dtype=torch.float64)
        b_ih = torch.randn(gates * H, generator=gen, dtype=torch.float64)
        b_hh = torch.randn(gates * H, generator=gen, dtype=torch.float64)
        if mode == "lstm":
            got = reference.lstm_cell(x @ w_ih.t() + b_ih + b_hh, h, c, w_hh)
            want = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        elif mode == "gru":
            got = (reference.gru_cell(x @ w_ih.t() + b_ih, h, w_hh, b_hh),)
            want = (torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh),)
        else:
            got = (reference.rnn_cell(x @ w_ih.t() + b_ih + b_hh, h, w_hh, mode[4:]),)
            want = (getattr(torch, mode + "_cell")(x, h, w_ih, w_hh, b_ih, b_hh),)
        for g, w in zip(got, want, strict=True):
            assert_close(mode, w, g)
