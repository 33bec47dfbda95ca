"""torch.compile(fullgraph=True) over fastrnn modules: no graph break, same results and gradients as eager."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from parity import has_triton_recurrence

import fastrnn

BACKENDS = ["auto", pytest.param("triton", marks=pytest.mark.skipif(not has_triton_recurrence(), reason="no ops"))]

MODULES = {
    "lstm-2l-bidir": lambda b: fastrnn.LSTM(4, 6, num_layers=2, bidirectional=True, backend=b),
    "lstm-proj-bf": lambda b: fastrnn.LSTM(4, 6, proj_size=3, batch_first=True, backend=b),
    "gru": lambda b: fastrnn.GRU(4, 5, backend=b),
    "rnn-relu": lambda b: fastrnn.RNN(4, 5, nonlinearity="relu", backend=b),
}


def _launches() -> int:
    from fastrnn.ops import launch_counts

    return sum(launch_counts.values())


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _run(module, x, ups):
    outs = _flat(module(x))
    grads = torch.autograd.grad(outs, [x, *module.parameters()], ups)
    return outs, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODULES))
def test_module_compiles_fullgraph(name, backend):
    torch._dynamo.reset()
    module = MODULES[name](backend)
    x = torch.randn(5, 3, 4, requires_grad=True)
    eager_out = _flat(module(x))
    ups = [torch.randn_like(o) for o in eager_out]
    ref_outs, ref_grads = _run(module, x, ups)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    launches = _launches()
    outs, grads = _run(compiled, x, ups)
    if backend == "triton":  # the compiled graph really called the Triton kernels, forward and backward
        assert _launches() > launches
    for i, (r, o) in enumerate(zip(ref_outs, outs, strict=True)):
        assert_close(f"{name} output {i}", r, o)
    for i, (r, o) in enumerate(zip(ref_grads, grads, strict=True)):
        assert_close(f"{name} grad {i}", r, o)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_compiles_fullgraph(backend):
    torch._dynamo.reset()
    cell = fastrnn.LSTMCell(4, 6, backend=backend)
    x, h, c = torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 6)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    for r, o in zip(cell(x, (h, c)), compiled(x, (h, c)), strict=True):
        assert_close("lstm cell", r, o)
