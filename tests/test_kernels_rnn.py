"""Elman RNN (tanh / relu) Triton kernels (through fastrnn.ops.recurrence) against the fp64 reference:
outputs, final state and every gradient, with and without lengths, both directions, awkward sizes,
fp32/fp16/bf16."""

from __future__ import annotations

import pytest
import torch
from recurrence_check import check_large, check_recurrence, make_lengths

MODES = ["rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("mode", MODES)
def test_rnn_fp32(mode, packed, reverse):
    T, B = 5, 3
    check_recurrence(mode, T, B, 20, lengths=make_lengths(T, B) if packed else None, reverse=reverse)


@pytest.mark.parametrize(("T", "B", "H", "reverse"), [(1, 1, 5, False), (7, 17, 20, True), (3, 2, 80, False)])
@pytest.mark.parametrize("mode", MODES)
def test_rnn_awkward_sizes(mode, T, B, H, reverse):
    check_recurrence(mode, T, B, H, lengths=make_lengths(T, B), reverse=reverse)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_rnn_low_precision(mode, dtype):
    T, B = 6, 3
    check_recurrence(mode, T, B, 20, lengths=make_lengths(T, B), dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("T", "B", "H"), [(1024, 64, 256), (128, 32, 1024)])
@pytest.mark.parametrize("mode", MODES)
def test_rnn_gpu_large(mode, T, B, H, dtype):
    check_large(mode, T, B, H, dtype)
