"""Under torch.autocast the Triton recurrence runs in the autocast dtype, as cuDNN does under CUDA autocast.

Both LSTM/RNN biases are folded into the input-projection GEMM, so gx stays in the autocast dtype instead of
being promoted back to fp32 by a separate fp32 bias add.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from parity import has_triton_recurrence, triton_device

import fastrnn

pytestmark = pytest.mark.skipif(not has_triton_recurrence(), reason="fastrnn.ops not available")


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU, fastrnn.RNN])
def test_triton_recurrence_follows_autocast_dtype(cls):
    device = triton_device()
    module = cls(4, 6, backend="triton").to(device)
    x = torch.randn(5, 3, 4, device=device)
    low = torch.bfloat16
    with torch.autocast(device.type, dtype=low):
        out, hidden = module(x)
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    assert out.dtype == low and h_n.dtype == low
    out.float().sum().backward()
    assert module.weight_hh_l0.grad.dtype == torch.float32  # parameters keep their own dtype
    with torch.no_grad():
        expected, _ = fastrnn.from_torch(fastrnn.to_torch(module), backend="reference").double()(x.double())
    assert_close("autocast output vs fp64", expected, out, dtype=low)
