"""Low-precision modules: fp16/bf16 outputs and every gradient against an fp64 reference.

fastrnn keeps state and accumulation in fp32, so in fp16/bf16 it must be at least as close to the fp64 truth as
torch.nn itself (same weights rounded to the same dtype), and within a fixed relative-error bound.
"""

from __future__ import annotations

import pytest
import torch
from helpers import REL_TOL, rel_error
from parity import has_triton_recurrence, triton_device

import fastrnn

BACKENDS = ["reference", pytest.param("triton", marks=pytest.mark.skipif(not has_triton_recurrence(), reason="no ops"))]


def _flat(out):
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


def _outputs_and_grads(module, x, ups):
    x = x.detach().requires_grad_()
    outs = _flat(module(x))
    upstream = [u.to(o.device, o.dtype) for u, o in zip(ups, outs, strict=True)]
    grads = torch.autograd.grad(outs, [x, *module.parameters()], upstream)
    return [t.double().cpu() for t in (*outs, *grads)]


def _rel_errors(got, ref):
    return [rel_error(r, g) for g, r in zip(got, ref, strict=True)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN])
def test_low_precision_as_close_to_fp64_as_torch(cls, backend, dtype):
    device = triton_device() if backend == "triton" else torch.device("cpu")
    exact = cls(8, 20, num_layers=2, bidirectional=True).double()
    # round the weights to the low dtype once, so every contender and the fp64 truth share them
    exact.load_state_dict({k: v.to(dtype).double() for k, v in exact.state_dict().items()})
    x = torch.randn(9, 5, 8, dtype=torch.double).to(dtype).double()
    truth_module = fastrnn.from_torch(exact, backend="reference")
    ups = [torch.randn_like(o) for o in _flat(truth_module(x))]
    truth = _outputs_and_grads(truth_module, x, ups)

    ours = _rel_errors(_outputs_and_grads(fastrnn.from_torch(exact, backend=backend).to(device, dtype),
                                          x.to(device, dtype), ups), truth)
    theirs = _rel_errors(_outputs_and_grads(fastrnn.to_torch(truth_module).to(dtype), x.to(dtype), ups), truth)
    assert max(ours) <= REL_TOL[dtype], f"max relative error {max(ours):.2e} > {REL_TOL[dtype]:.0e}"
    assert max(ours) <= 1.25 * max(theirs), f"fastrnn {max(ours):.2e} vs torch.nn {max(theirs):.2e}"
