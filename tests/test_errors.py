"""Error parity with torch.nn: each mistake raises the same exception class at the same point.

One table of (description, class, constructor args, constructor kwargs, forward call, message pattern). Each
row runs on torch.nn and on fastrnn (reference and auto backends). The row asserts what torch.nn does
(so a torch upgrade that changes behaviour shows up here), that fastrnn raises the same class at the same
point (construction or forward), and that fastrnn's message names the argument. Rows with ``pattern=None``
are things torch.nn accepts: fastrnn must accept them too.

PackedSequence rows: torch.nn.RNN/GRU check a packed input as they check a padded one, but torch.nn.LSTM runs
none of its own checks on it (its ATen operator's errors decide the class: RuntimeError for a data dtype that
is not the weights', IndexError for a 2-D state, TypeError for a Tensor hx with sorted data); the rows
tabulate each class. Unsorted lengths without ``enforce_sorted=False`` are rejected by torch's
``pack_padded_sequence`` before any module runs; that row records the class a user of either library sees.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from parity import one_thread
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


T, B, I, H = 5, 3, 4, 6  # noqa: E741


def x3(*, t=T, b=B, i=I, dtype=torch.float32):
    return torch.randn(t, b, i, dtype=dtype)


def h3(layers=1, b=B, h=H, dtype=torch.float32):
    return torch.randn(layers, b, h, dtype=dtype)


def packed(i=I):
    return pack_padded_sequence(torch.randn(T, B, i), [3, T, 2], enforce_sorted=False)


def packed_sorted(i=I):
    return pack_padded_sequence(torch.randn(T, B, i), [T, 3, 2])


def packed_of(dtype, sorted_=False):
    """A PackedSequence whose data has ``dtype`` (torch packs any dtype)."""
    data = torch.randn(T, B, I).to(dtype) if dtype.is_floating_point else torch.ones(T, B, I, dtype=dtype)
    return pack_padded_sequence(data, [T, 3, 2] if sorted_ else [3, T, 2], enforce_sorted=sorted_)


def pack_unsorted_lengths():
    return pack_padded_sequence(torch.randn(T, B, I), [3, T, 2])


@dataclass
class Row:
    desc: str
    cls: str
    args: tuple
    kwargs: dict
    call: Any = None  # module -> result; None: the row is about construction only
    exc: type[BaseException] | None = None  # what torch.nn raises (None: nothing)
    at: str = "forward"  # "construct" | "forward"
    pattern: str | None = None  # must appear in fastrnn's message (case-insensitive regex)


def construct(desc, cls, kwargs, exc, pattern, args=(I, H)):
    return Row(desc, cls, args, kwargs, None, exc, "construct", pattern)


def fwd(desc, cls, call, exc, pattern, kwargs=None, args=(I, H)):
    return Row(desc, cls, args, kwargs or {}, call, exc, "forward", pattern)


def accepted(desc, cls, kwargs=None, call=None, args=(I, H)):
    return Row(desc, cls, args, kwargs or {}, call, None, "forward" if call else "construct", None)


SEQ = ("LSTM", "GRU", "RNN")
CELLS = ("LSTMCell", "GRUCell", "RNNCell")


def hx_for(cls, h, c=None):
    """The hx argument of ``cls``: (h, c) for LSTM, else h."""
    if cls == "LSTM":
        return (h, h3(h.size(0), h.size(1)) if c is None else c)
    return h


ROWS: list[Row] = []
for cls in SEQ:
    ROWS += [
        # -- construction ------------------------------------------------------------------------------------
        construct("input_size zero", cls, {}, ValueError, "input_size", args=(0, H)),
        construct("input_size negative", cls, {}, ValueError, "input_size", args=(-2, H)),
        construct("hidden_size zero", cls, {}, ValueError, "hidden_size", args=(I, 0)),
        construct("hidden_size negative", cls, {}, ValueError, "hidden_size", args=(I, -1)),
        construct("num_layers zero", cls, {"num_layers": 0}, ValueError, "num_layers"),
        construct("num_layers negative", cls, {"num_layers": -1}, ValueError, "num_layers"),
        construct("input_size float", cls, {}, TypeError, "input_size", args=(4.0, H)),
        construct("hidden_size str", cls, {}, TypeError, "hidden_size", args=(I, "6")),
        construct("num_layers float", cls, {"num_layers": 2.0}, TypeError, "num_layers"),
        construct("num_layers str", cls, {"num_layers": "2"}, TypeError, "num_layers"),
        construct("dropout negative", cls, {"dropout": -0.1}, ValueError, "dropout"),
        construct("dropout above one", cls, {"dropout": 1.5, "num_layers": 2}, ValueError, "dropout"),
        construct("dropout bool", cls, {"dropout": True, "num_layers": 2}, ValueError, "dropout"),
        construct("dropout str", cls, {"dropout": "0.5", "num_layers": 2}, ValueError, "dropout"),
        construct("dropout None", cls, {"dropout": None}, TypeError, "dropout"),
        construct("bias int", cls, {"bias": 1}, TypeError, "bias"),
        construct("bias None", cls, {"bias": None}, TypeError, "bias"),
        construct("batch_first str", cls, {"batch_first": "yes"}, TypeError, "batch_first"),
        construct("batch_first int", cls, {"batch_first": 0}, TypeError, "batch_first"),
        construct("unknown keyword", cls, {"hiden_size": 3}, TypeError, "hiden_size"),
        accepted("input_size bool (an int to torch)", cls, args=(True, H)),
        accepted("num_layers bool", cls, {"num_layers": True}),
        accepted("bidirectional int", cls, {"bidirectional": 1}),
        accepted("dropout one", cls, {"dropout": 1, "num_layers": 2}),
        accepted("dropout int zero", cls, {"dropout": 0}),
        # -- forward: input ------------------------------------------------------------------------------------
        fwd("wrong feature size", cls, lambda m: m(x3(i=I + 1)), RuntimeError, "input_size"),
        fwd("wrong feature size unbatched", cls, lambda m: m(torch.randn(T, I - 1)), RuntimeError, "input_size"),
        fwd("1-D input", cls, lambda m: m(torch.randn(I)), ValueError, r"input.*2D or 3D"),
        fwd("4-D input", cls, lambda m: m(torch.randn(2, T, B, I)), ValueError, r"input.*2D or 3D"),
        fwd("integer input", cls, lambda m: m(torch.ones(T, B, I, dtype=torch.long)), ValueError, "dtype"),
        fwd("float64 input, float32 module", cls, lambda m: m(x3(dtype=torch.float64)), ValueError, "dtype"),
        fwd("empty sequence", cls, lambda m: m(x3(t=0)), RuntimeError, "sequence length"),
        fwd("packed: wrong feature size", cls, lambda m: m(packed(I + 2)), RuntimeError,
            "input_size|shapes cannot be multiplied"),
        fwd("packed sorted: wrong feature size", cls, lambda m: m(packed_sorted(I - 1)), RuntimeError,
            "input_size|shapes cannot be multiplied"),
        # torch.nn.LSTM leaves a PackedSequence's dtype to the ATen operator (RuntimeError); RNN/GRU check it
        fwd("packed: integer data", cls, lambda m: m(packed_of(torch.long)),
            RuntimeError if cls == "LSTM" else ValueError, "dtype"),
        fwd("packed sorted: integer data", cls, lambda m: m(packed_of(torch.int32, sorted_=True)),
            RuntimeError if cls == "LSTM" else ValueError, "dtype"),
        fwd("packed: float64 data, float32 module", cls, lambda m: m(packed_of(torch.float64)),
            RuntimeError if cls == "LSTM" else ValueError, "dtype"),
        fwd("packed sorted: float16 data, float32 module", cls, lambda m: m(packed_of(torch.float16, True)),
            RuntimeError if cls == "LSTM" else ValueError, "dtype"),
        fwd("unsorted lengths without enforce_sorted=False (raised by pack_padded_sequence, before the module)",
            cls, lambda m: m(pack_unsorted_lengths()), RuntimeError, "enforce_sorted"),
        fwd("empty sequence, batch_first", cls, lambda m: m(torch.randn(B, 0, I)), RuntimeError, "sequence length",
            kwargs={"batch_first": True}),
        fwd("empty unbatched sequence", cls, lambda m: m(torch.randn(0, I)), RuntimeError, "sequence length"),
        accepted("empty batch", cls, call=lambda m: m(x3(b=0))),
        accepted("empty batch, batch_first", cls, {"batch_first": True}, call=lambda m: m(torch.randn(0, T, I))),
        accepted("unbatched batch_first input", cls, {"batch_first": True}, call=lambda m: m(torch.randn(T, I))),
    ]

for cls in ("GRU", "RNN"):
    ROWS += [
        construct("proj_size for GRU/RNN", cls, {"proj_size": 2}, ValueError, "proj_size"),
        construct("proj_size=0 for GRU/RNN", cls, {"proj_size": 0}, ValueError, "proj_size"),
        # -- forward: hx ---------------------------------------------------------------------------------------
        fwd("hx wrong num_layers", cls, lambda m: m(x3(), h3(1)), RuntimeError, "hidden",
            kwargs={"num_layers": 2}),
        fwd("hx wrong directions", cls, lambda m: m(x3(), h3(1)), RuntimeError, "hidden",
            kwargs={"bidirectional": True}),
        fwd("hx wrong batch", cls, lambda m: m(x3(), h3(1, b=B + 1)), RuntimeError, "hidden"),
        fwd("hx wrong hidden size", cls, lambda m: m(x3(), h3(1, h=H - 1)), RuntimeError, "hidden"),
        fwd("hx wrong batch, batch_first", cls, lambda m: m(x3(), h3(1, b=B)), RuntimeError, "hidden",
            kwargs={"batch_first": True}),
        fwd("hx float64", cls, lambda m: m(x3(), h3(dtype=torch.float64)), RuntimeError, "dtype"),
        fwd("hx 2-D for batched input", cls, lambda m: m(x3(), torch.randn(1, H)), RuntimeError, "hx"),
        fwd("hx 3-D for unbatched input", cls, lambda m: m(torch.randn(T, I), h3(1, b=1)), RuntimeError, "hx"),
        fwd("unbatched hx wrong hidden size", cls, lambda m: m(torch.randn(T, I), torch.randn(1, H + 1)),
            RuntimeError, "hidden"),
        fwd("packed: hx batch too small", cls, lambda m: m(packed(), h3(1, b=B - 1)), RuntimeError,
            "hidden|index|bounds"),
        fwd("packed sorted: hx batch too big", cls, lambda m: m(packed_sorted(), h3(1, b=B + 2)), RuntimeError,
            "hidden"),
        fwd("packed sorted: hx batch too small", cls, lambda m: m(packed_sorted(), h3(1, b=B - 1)), RuntimeError,
            "hidden"),
        fwd("packed: hx 2-D", cls, lambda m: m(packed(), torch.randn(B, H)), RuntimeError, "hidden"),
        fwd("packed: hx float64", cls, lambda m: m(packed(), h3(dtype=torch.float64)), RuntimeError, "dtype"),
        fwd("hx tuple", cls, lambda m: m(x3(), (h3(),)), AttributeError, "dim"),
        accepted("packed unsorted: hx batch too big (torch permutes first)", cls,
                 call=lambda m: m(packed(), h3(1, b=B + 2))),
    ]
ROWS += [
    accepted("hidden_size bool (an int to torch)", "LSTM", args=(I, True)),
    accepted("hidden_size bool (an int to torch)", "GRU", args=(I, True)),
    construct("nonlinearity unknown", "RNN", {"nonlinearity": "sigmoid"}, ValueError, "nonlinearity"),
    construct("nonlinearity positional unknown", "RNN", {}, ValueError, "nonlinearity", args=(I, H, 1, "gelu")),
    construct("proj_size == hidden_size", "LSTM", {"proj_size": H}, ValueError, "proj_size"),
    construct("proj_size > hidden_size", "LSTM", {"proj_size": H + 3}, ValueError, "proj_size"),
    construct("proj_size negative", "LSTM", {"proj_size": -1}, ValueError, "proj_size"),
    construct("proj_size float", "LSTM", {"proj_size": 2.0}, TypeError, ""),
    construct("proj_size str", "LSTM", {"proj_size": "2"}, TypeError, ""),
    fwd("h0 wrong num_layers", "LSTM", lambda m: m(x3(), (h3(1), h3(2))), RuntimeError, r"hidden\[0\]",
        kwargs={"num_layers": 2}),
    fwd("h0 wrong batch", "LSTM", lambda m: m(x3(), (h3(1, b=2), h3(1))), RuntimeError, r"hidden\[0\]"),
    fwd("h0 hidden_size instead of proj_size", "LSTM", lambda m: m(x3(), (h3(1), h3(1))), RuntimeError,
        r"hidden\[0\]", kwargs={"proj_size": 2}),
    fwd("c0 wrong layers", "LSTM", lambda m: m(x3(), (h3(2), h3(1))), RuntimeError, r"hidden\[1\]",
        kwargs={"num_layers": 2}),
    fwd("c0 wrong batch", "LSTM", lambda m: m(x3(), (h3(1), h3(1, b=B + 1))), RuntimeError, r"hidden\[1\]"),
    fwd("c0 wrong hidden size", "LSTM", lambda m: m(x3(), (h3(1), h3(1, h=H + 1))), RuntimeError, r"hidden\[1\]"),
    fwd("c0 proj_size instead of hidden_size", "LSTM", lambda m: m(x3(), (h3(1, h=2), h3(1, h=2))), RuntimeError,
        r"hidden\[1\]", kwargs={"proj_size": 2}),
    fwd("h0 float64", "LSTM", lambda m: m(x3(), (h3(dtype=torch.float64), h3())), RuntimeError, "dtype"),
    fwd("c0 float64", "LSTM", lambda m: m(x3(), (h3(), h3(dtype=torch.float64))), RuntimeError, "dtype"),
    fwd("h0 2-D for batched input", "LSTM", lambda m: m(x3(), (torch.randn(1, H), h3())), RuntimeError, "hx"),
    fwd("c0 2-D for batched input", "LSTM", lambda m: m(x3(), (h3(), torch.randn(1, H))), RuntimeError, "cx"),
    fwd("hx 3-D for unbatched input", "LSTM", lambda m: m(torch.randn(T, I), (h3(1, b=1), h3(1, b=1))),
        RuntimeError, "hx"),
    fwd("unbatched c0 wrong size", "LSTM", lambda m: m(torch.randn(T, I), (torch.randn(1, H), torch.randn(1, 2))),
        RuntimeError, r"hidden\[1\]"),
    fwd("hx a single tensor (2 layers)", "LSTM", lambda m: m(x3(), h3(2)), RuntimeError, "hx",
        kwargs={"num_layers": 2}),
    fwd("hx a single tensor (1 layer)", "LSTM", lambda m: m(x3(), h3(1)), IndexError, ""),
    fwd("hx tuple of one", "LSTM", lambda m: m(x3(), (h3(),)), IndexError, ""),
    fwd("hx tuple of three", "LSTM", lambda m: m(x3(), (h3(), h3(), h3())), RuntimeError, "two"),
    fwd("packed: h0 batch too small", "LSTM", lambda m: m(packed(), (h3(1, b=2), h3(1, b=2))), RuntimeError,
        "hidden|index|bounds"),
    accepted("packed unsorted: hx batch too big (torch permutes first)", "LSTM",
             call=lambda m: m(packed(), (h3(1, b=B + 1), h3(1, b=B + 1)))),
    # torch.nn.LSTM runs none of its own checks on a PackedSequence: the ATen operator's classes
    fwd("packed sorted: h0 batch too small", "LSTM", lambda m: m(packed_sorted(), (h3(1, b=B - 1), h3())),
        RuntimeError, r"hidden\[0\]"),
    fwd("packed sorted: h0 batch too big", "LSTM", lambda m: m(packed_sorted(), (h3(1, b=B + 1), h3())),
        RuntimeError, r"hidden\[0\]"),
    fwd("packed: c0 batch too small", "LSTM", lambda m: m(packed(), (h3(), h3(1, b=B - 1))), RuntimeError,
        r"hidden\[1\]"),
    fwd("packed sorted: c0 batch too big", "LSTM", lambda m: m(packed_sorted(), (h3(), h3(1, b=B + 1))),
        RuntimeError, r"hidden\[1\]"),
    accepted("packed unsorted: c0 batch too big (torch permutes first)", "LSTM",
             call=lambda m: m(packed(), (h3(), h3(1, b=B + 1)))),
    fwd("packed: c0 wrong hidden size", "LSTM", lambda m: m(packed(), (h3(), h3(1, h=H + 1))), RuntimeError,
        r"hidden\[1\]"),
    fwd("packed: h0 float64", "LSTM", lambda m: m(packed(), (h3(dtype=torch.float64), h3())), RuntimeError,
        "dtype"),
    fwd("packed: h0 2-D", "LSTM", lambda m: m(packed(), (torch.randn(B, H), h3())), IndexError, r"hidden\[0\]"),
    fwd("packed sorted: c0 2-D", "LSTM", lambda m: m(packed_sorted(), (h3(), torch.randn(B, H))), IndexError,
        r"hidden\[1\]"),
    fwd("packed sorted: hx a single tensor", "LSTM", lambda m: m(packed_sorted(), h3(1)), TypeError, "hx"),
    fwd("packed: hx a single tensor (1 layer)", "LSTM", lambda m: m(packed(), h3(1)), IndexError, "hx"),
    fwd("packed: hx a single tensor (2 layers)", "LSTM", lambda m: m(packed(), h3(2)), IndexError, "hidden",
        kwargs={"num_layers": 2}),
    fwd("packed sorted: hx tuple of three", "LSTM", lambda m: m(packed_sorted(), (h3(), h3(), h3())),
        RuntimeError, "two"),
    accepted("packed unsorted: hx tuple of three (torch permutes the first two only)", "LSTM",
             call=lambda m: m(packed(), (h3(), h3(), h3()))),
]

# -- cells ----------------------------------------------------------------------------------------------------
for cls in CELLS:
    lstm = cls == "LSTMCell"

    def hx2(h=H, b=B, dtype=torch.float32, lstm=lstm):
        s = torch.randn(b, h, dtype=dtype)
        return (s, torch.randn(b, H)) if lstm else s

    ROWS += [
        construct("input_size negative", cls, {}, RuntimeError, "negative", args=(-1, H)),
        construct("input_size float", cls, {}, TypeError, "", args=(4.0, H)),
        construct("unknown keyword", cls, {"hiden_size": 3}, TypeError, "hiden_size"),
        accepted("hidden_size zero", cls, args=(I, 0)),
        fwd("wrong input size", cls, lambda m: m(torch.randn(B, I + 1)), RuntimeError, "input_size"),
        fwd("wrong input size unbatched", cls, lambda m: m(torch.randn(I + 1)), RuntimeError, "input_size"),
        fwd("batch mismatch", cls, lambda m, hx2=hx2: m(torch.randn(B, I), hx2(b=B + 1)), RuntimeError, "batch"),
        fwd("wrong hidden size", cls, lambda m, hx2=hx2: m(torch.randn(B, I), hx2(h=H + 1)), RuntimeError,
            "hidden_size"),
        fwd("3-D input", cls, lambda m: m(torch.randn(1, B, I)), ValueError, r"input.*1D or 2D"),
        fwd("0-D input", cls, lambda m: m(torch.tensor(1.0)), ValueError, r"input.*1D or 2D"),
        fwd("3-D hx", cls, lambda m, lstm=lstm: m(torch.randn(B, I), hx_for3(lstm)), ValueError,
            r"(hx|hidden).*1D or 2D"),
        fwd("unbatched input, 2-D hx", cls, lambda m, hx2=hx2: m(torch.randn(I), hx2()), RuntimeError,
            "hidden|batch|2-D"),
        fwd("batched input, 1-D hx", cls, lambda m, lstm=lstm: m(torch.randn(B, I), (torch.randn(H),) * 2 if lstm
                                                                 else torch.randn(H)), RuntimeError,
            "hidden|batch|2-D"),
        fwd("hx float64", cls, lambda m, hx2=hx2: m(torch.randn(B, I), hx2(dtype=torch.float64)), RuntimeError,
            "dtype"),
        fwd("input float64, float32 cell", cls, lambda m: m(torch.randn(B, I, dtype=torch.float64)), RuntimeError,
            "dtype"),
        fwd("integer input", cls, lambda m: m(torch.ones(B, I, dtype=torch.long)), RuntimeError, "dtype"),
        accepted("B=0", cls, call=lambda m: m(torch.randn(0, I))),
    ]


def hx_for3(lstm):
    s = torch.randn(1, B, H)
    return (s, s) if lstm else s


ROWS += [
    fwd("c wrong hidden size", "LSTMCell", lambda m: m(torch.randn(B, I), (torch.randn(B, H), torch.randn(B, 2))),
        RuntimeError, "hidden1|hidden_size"),
    fwd("c batch mismatch", "LSTMCell", lambda m: m(torch.randn(B, I), (torch.randn(B, H), torch.randn(1, H))),
        RuntimeError, "batch"),
    fwd("hx tuple of three", "LSTMCell", lambda m: m(torch.randn(B, I), (torch.randn(B, H),) * 3), RuntimeError,
        "two"),
    fwd("hx tuple of one", "LSTMCell", lambda m: m(torch.randn(B, I), (torch.randn(B, H),)), RuntimeError, "two"),
    fwd("unknown nonlinearity (checked at forward)", "RNNCell", lambda m: m(torch.randn(B, I)), RuntimeError,
        "nonlinearity", kwargs={"nonlinearity": "sigmoid"}),
    fwd("unknown nonlinearity, 3-D input: the dim check comes first", "RNNCell", lambda m: m(torch.randn(1, B, I)),
        ValueError, "1D or 2D", kwargs={"nonlinearity": "sigmoid"}),
    accepted("unknown nonlinearity is accepted at construction", "RNNCell", {"nonlinearity": "sigmoid"}),
]


def outcome(factory, row: Row):
    """(point, exception or None, result): where the first error was raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = factory(*row.args, **row.kwargs)
    except Exception as e:  # noqa: BLE001 -- the class is what is compared
        return "construct", e
    if row.call is None:
        return "construct", None
    torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row.call(module)
    except Exception as e:  # noqa: BLE001
        return "forward", e
    return "forward", None


def _id(row):
    return f"{row.cls}-{row.desc}".replace(" ", "_")


@pytest.mark.parametrize("row", ROWS, ids=[_id(r) for r in ROWS])
def test_torch_behaves_as_tabled(row):
    """The table's claim about torch.nn (guards the table against torch upgrades and typos)."""
    point, err = outcome(getattr(torch.nn, row.cls), row)
    assert (point, type(err) if err else None) == (row.at, row.exc), f"torch.nn: {err!r}"


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("row", ROWS, ids=[_id(r) for r in ROWS])
def test_fastrnn_raises_like_torch(row, backend):
    def factory(*args, **kwargs):
        return getattr(fastrnn, row.cls)(*args, **kwargs, backend=backend)

    point, err = outcome(factory, row)
    assert (point, type(err) if err else None) == (row.at, row.exc), f"fastrnn: {err!r}"
    if err is not None and row.pattern:
        assert re.search(row.pattern, str(err), re.IGNORECASE), f"message does not name {row.pattern!r}: {err}"
