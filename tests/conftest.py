"""Shared test setup: NaN-poisoned allocations, GPU marker handling, deterministic seeds."""

from __future__ import annotations

import functools
import math
import os

import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter. The variable is read when a kernel is
# decorated, so it must be set before fastrnn.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

_EMPTY_FNS = ("empty", "empty_like", "empty_strided")


def _poisoned(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if out.is_floating_point():
            out.fill_(math.nan)
        elif not out.is_complex() and out.dtype != torch.bool:
            out.fill_(torch.iinfo(out.dtype).max if out.numel() else 0)
        return out

    return wrapper


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Fill every fresh torch.empty* allocation with NaN so an output a kernel forgot to write cannot pass."""
    for name in _EMPTY_FNS:
        monkeypatch.setattr(torch, name, _poisoned(getattr(torch, name)))
    yield


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 checks are exact-fp32 checks: torch's default TF32 for cuDNN RNNs (which fastrnn's fp32 recurrences
    and input projections follow on a GPU, fastrnn.ops.strategy.precision) is off unless a test turns it on."""
    with torch.backends.cudnn.flags(allow_tf32=False):
        yield


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
