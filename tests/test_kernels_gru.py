"""GRU Triton kernels (through fastrnn.ops.recurrence) against the fp64 reference: outputs, final state and
every gradient (b_hh included), with and without lengths, both directions, awkward sizes, fp32/fp16/bf16."""

from __future__ import annotations

import pytest
import torch
from recurrence_check import check_large, check_recurrence, make_lengths


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["full", "lengths"])
def test_gru_fp32(packed, reverse):
    T, B = 5, 3
    check_recurrence("gru", T, B, 20, lengths=make_lengths(T, B) if packed else None, reverse=reverse)


@pytest.mark.parametrize(("T", "B", "H", "reverse"), [(1, 1, 5, True), (7, 17, 20, False), (3, 2, 80, True)])
def test_gru_awkward_sizes(T, B, H, reverse):
    check_recurrence("gru", T, B, H, lengths=make_lengths(T, B), reverse=reverse)


def test_gru_without_bias():
    T, B = 5, 3
    check_recurrence("gru", T, B, 20, lengths=make_lengths(T, B), bias=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gru_low_precision(dtype):
    T, B = 6, 3
    check_recurrence("gru", T, B, 20, lengths=make_lengths(T, B), reverse=True, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("T", "B", "H"), [(1024, 64, 256), (128, 32, 1024)])
def test_gru_gpu_large(T, B, H, dtype):
    check_large("gru", T, B, H, dtype, reverse=H > 256)
