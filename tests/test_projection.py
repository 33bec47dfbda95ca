"""fastrnn.ops.projection: the triton backend's input projection keeps cuDNN's fp32 contract (TF32 exactly when
torch.backends.cudnn.allow_tf32 is set) and computes what F.linear computes, gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

from fastrnn.ops import projection


@pytest.mark.parametrize("bias", [True, False])
def test_tf32_linear_matches_f_linear(bias):
    """On the CPU the TF32 switch changes nothing, so the Function must equal F.linear bit for bit-ish, and its
    backward F.linear's; the switch it flips is restored."""
    x = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True) if bias else None
    before = torch.backends.cuda.matmul.allow_tf32
    out = projection.TF32Linear.apply(x, w, b)
    ref = F.linear(x, w, b)
    assert_close("y", ref, out)
    up = torch.randn_like(ref)
    got = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], up)
    want = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], up)
    for name, g, r in zip(("dx", "dw", "db"), got, want, strict=False):
        assert_close(name, r, g)
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert torch.autograd.gradcheck(projection.TF32Linear.apply, (x, w, b))


def test_the_switch_is_restored_on_error():
    before = torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(RuntimeError), projection.tf32_matmuls():
        assert torch.backends.cuda.matmul.allow_tf32
        raise RuntimeError("boom")
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_when_tf32_applies(monkeypatch):
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    assert not projection.uses_tf32(x, w)  # a CPU tensor: plain F.linear
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default (the suite turns it off)
    assert projection.uses_tf32(x, w)
    assert not projection.uses_tf32(x.double(), w.double())
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert not projection.uses_tf32(x, w)
