"""LSTM Triton kernels (through fastrnn.ops.recurrence) against the fp64 reference: outputs, final states
and every gradient, with and without lengths, both directions, proj_size, awkward sizes, fp32/fp16/bf16."""

from __future__ import annotations

import pytest
import torch
from recurrence_check import check_large, check_recurrence, make_lengths

LOW_PRECISION = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["full", "lengths"])
def test_lstm_fp32(packed, reverse):
    T, B = 5, 3
    check_recurrence("lstm", T, B, 20, lengths=make_lengths(T, B) if packed else None, reverse=reverse)


@pytest.mark.parametrize(("T", "B", "H", "reverse"), [(1, 1, 5, False), (7, 17, 20, True), (3, 2, 80, False)])
def test_lstm_awkward_sizes(T, B, H, reverse):
    check_recurrence("lstm", T, B, H, lengths=make_lengths(T, B), reverse=reverse)


@pytest.mark.parametrize(("H", "proj", "reverse"), [(20, 7, False), (20, 7, True), (80, 66, False)])
def test_lstm_proj(H, proj, reverse):
    T, B = 4, 3
    check_recurrence("lstm", T, B, H, proj=proj, lengths=make_lengths(T, B), reverse=reverse)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_lstm_low_precision(dtype):
    T, B = 6, 3
    check_recurrence("lstm", T, B, 20, proj=0, lengths=make_lengths(T, B), dtype=dtype)


def test_lstm_proj_fp16():
    T, B = 4, 3
    check_recurrence("lstm", T, B, 20, proj=7, lengths=make_lengths(T, B), reverse=True, dtype=torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("T", "B", "H", "proj"), [(1024, 64, 256, 0), (128, 32, 1024, 0), (256, 48, 512, 200)])
def test_lstm_gpu_large(T, B, H, proj, dtype):
    check_large("lstm", T, B, H, dtype, proj=proj, reverse=proj > 0)
