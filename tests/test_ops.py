"""fastrnn.ops as torch operators: opcheck of every custom op, torch.compile, launch counting, autocast-style
mixed dtypes, partial upstream gradients, aliasing and argument errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_close
from recurrence_check import check_recurrence, make_inputs, make_lengths, triton_device

from fastrnn import ops, reference


def _op_args(mode: str, T=3, B=2, H=5, proj=0, packed=True, reverse=True, save=True):
    x = make_inputs(mode, T, B, H, proj)
    if not save:
        x = {n: None if v is None else v.detach() for n, v in x.items()}
    lengths = make_lengths(T, B).to(triton_device()) if packed else None
    if mode == "lstm":
        args = (x["gx"], x["h0"], x["c0"], x["w_hh"], x["w_hr"], lengths, reverse, save)
        return torch.ops.fastrnn.lstm.default, args
    if mode == "gru":
        return torch.ops.fastrnn.gru.default, (x["gx"], x["h0"], x["w_hh"], x["b_hh"], lengths, reverse, save)
    return torch.ops.fastrnn.rnn.default, (x["gx"], x["h0"], x["w_hh"], lengths, reverse, mode[4:], save)


@pytest.mark.parametrize(
    ("mode", "proj", "packed", "save"),
    [
        ("lstm", 0, False, True),
        ("lstm", 3, True, True),
        ("lstm", 3, True, False),
        ("gru", 0, True, True),
        ("gru", 0, False, False),
        ("rnn_tanh", 0, False, True),
        ("rnn_relu", 0, True, False),
    ],
)
def test_opcheck(mode, proj, packed, save):
    op, args = _op_args(mode, proj=proj, packed=packed, save=save)
    torch.library.opcheck(op, args)


def test_opcheck_backward_ops():
    op, args = _op_args("lstm", proj=3)
    y, h_n, c_n, gates, hs, cs, ms = (t.detach() for t in op(*args))
    _, _, _, w_hh, w_hr, lengths, reverse, _ = args
    grads = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n))
    torch.library.opcheck(
        torch.ops.fastrnn.lstm_backward.default,
        (*grads, gates, hs, cs, ms, w_hh.detach(), w_hr.detach(), lengths, reverse),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_launch_counts_prove_triton_ran():
    ops.launch_counts.clear()
    x = make_inputs("lstm", 3, 2, 5)
    y, h_n, c_n = ops.recurrence("lstm", **x)
    assert ops.launch_counts == {"lstm_fwd": 1}
    (y.sum() + h_n.sum() + c_n.sum()).backward()
    assert ops.launch_counts == {"lstm_fwd": 1, "lstm_bwd": 1}


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_torch_compile_fullgraph(mode):
    T, B, H = 4, 3, 6
    x = make_inputs(mode, T, B, H)
    lengths = make_lengths(T, B)

    def f(gx, h0, c0, w_hh, b_hh):
        y, h_n, c_n = ops.recurrence(mode, gx, h0, c0, w_hh, b_hh, None, lengths, False)
        out = (y * y).sum() + h_n.sum()
        return out + c_n.sum() if c_n is not None else out

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [x[n] for n in ("gx", "h0", "c0", "w_hh", "b_hh")]
    leaves = [a for a in args if a is not None]
    expected = f(*args)
    expected_grads = torch.autograd.grad(expected, leaves)
    got = compiled(*args)
    got_grads = torch.autograd.grad(got, leaves)
    assert_close("loss", expected, got)
    for i, (e, g) in enumerate(zip(expected_grads, got_grads, strict=True)):
        assert_close(f"grad[{i}]", e, g)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_mixed_dtypes_like_autocast(mode):
    """fp16 gx with fp32 weights and states (what autocast hands over): outputs in fp16, gradients in each
    input's own dtype."""
    T, B = 5, 3
    check_recurrence(
        mode, T, B, 20, lengths=make_lengths(T, B), dtype=torch.float16, w_dtype=torch.float32,
        state_dtype=torch.float32,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_relu"])
def test_gradient_of_output_only(mode):
    """Only y feeds the loss, so autograd hands the op no gradient for h_n / c_n."""
    T, B, H = 4, 3, 6
    lengths = make_lengths(T, B)
    x = make_inputs(mode, T, B, H)
    ref_x = {n: None if v is None else v.detach().double().requires_grad_() for n, v in x.items()}
    up = torch.randn(T, B, H, dtype=torch.float64)
    (ops.recurrence(mode, **x, lengths=lengths)[0] * up.float()).sum().backward()
    (reference.recurrence(mode, **ref_x, lengths=lengths)[0] * up).sum().backward()
    for n, v in x.items():
        if v is not None:
            assert_close(f"d{n}", ref_x[n].grad, v.grad)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T", [1, 4])
def test_inference_without_saved_state(mode, reverse, T):
    """Under no_grad the forward keeps two state slots and no gates; results must not change."""
    B, H = 3, 6
    lengths = make_lengths(T, B)
    x = make_inputs(mode, T, B, H, proj=4 if mode == "lstm" else 0)
    with_grad = ops.recurrence(mode, **x, lengths=lengths, reverse=reverse)
    with torch.no_grad():
        without = ops.recurrence(mode, **x, lengths=lengths, reverse=reverse)
    for name, a, b in zip(("y", "h_n", "c_n"), with_grad, without, strict=True):
        assert_close(name, a, b)


def test_outputs_do_not_alias():
    x = make_inputs("lstm", 1, 2, 5)
    outs = ops.recurrence("lstm", **x)
    ptrs = [t.untyped_storage().data_ptr() for t in outs]
    ptrs += [t.untyped_storage().data_ptr() for t in x.values() if t is not None]
    assert len(set(ptrs)) == len(ptrs)


def test_empty_sequence():
    x = make_inputs("lstm", 0, 2, 5)
    y, h_n, c_n = ops.recurrence("lstm", **x)
    assert y.shape == (0, 2, 5)
    assert_close("h_n", x["h0"], h_n)
    assert_close("c_n", x["c0"], c_n)


def test_unknown_mode():
    x = make_inputs("rnn_tanh", 2, 2, 5)
    with pytest.raises(ValueError, match="mode"):
        ops.recurrence("lstmx", **x)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the gpu-marked tests run the compiled kernels")
def test_kernels_compile_for_cuda():
    """The compiled (non-interpreted) path of every kernel builds for sm_90, even on a machine without a GPU."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("cuda_compile_check.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
