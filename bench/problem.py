"""What every provider of one (case, dtype) shares: the torch.nn module, random inputs, upstream gradients and
the fp64 oracle.

The oracle is fastrnn's own reference loop (:func:`fastrnn.reference.recurrence`, reached through
``fastrnn.from_torch(..., backend="reference")``) on float64 copies of the same weights and inputs, on the same
device: the one oracle every fastrnn test uses too. ``tests/test_bench_harness.py`` checks it against torch.nn
in float64.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from bench.grid import Case

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_module(case: Case, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """The torch.nn module of ``case``, initialised as torch.nn does."""
    kw = dict(num_layers=case.layers, bidirectional=case.bidir, device=device, dtype=dtype)
    if case.cell == "lstm":
        return nn.LSTM(case.I, case.H, **kw)
    if case.cell == "gru":
        return nn.GRU(case.I, case.H, **kw)
    return nn.RNN(case.I, case.H, nonlinearity=case.cell.removeprefix("rnn_"), **kw)


def split_output(out, hidden, lstm: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    """A torch.nn-style ``(output, hidden)`` as ``(output data, (h_n,) or (h_n, c_n))``."""
    out = out.data if isinstance(out, PackedSequence) else out
    return out, (tuple(hidden) if lstm else (hidden,))


class Problem:
    """Inputs, weights and upstream gradients shared by every provider of one (case, dtype), and the oracle.

    Attributes:
        module: the torch.nn module (torch.nn init, seeded); providers copy its weights.
        x: the input leaf (requires grad): [T, B, I], or the packed data [N, I] for packed cases.
        input: what a torch.nn module takes: ``x`` or a PackedSequence around it.
        h0, c0: random initial states [L*D, B, H] (c0 None unless LSTM); ``hx`` in torch.nn's form.
        lengths: [B] int64 on the CPU for packed cases, else None. tokens: valid (b, t) pairs.
        grad_out, grad_states: random upstream gradients for the output (data) and each final state.
    """

    def __init__(self, case: Case, dtype: str, device: torch.device | str, seed: int = 0) -> None:
        self.case, self.dtype_name, self.dtype = case, dtype, TORCH_DTYPES[dtype]
        self.device = torch.device(device)
        self.lstm = case.cell == "lstm"
        torch.manual_seed(seed)
        self.module = torch_module(case, self.dtype, self.device)
        gen = torch.Generator().manual_seed(seed + 1)

        def randn(*shape):  # drawn on the CPU so every device sees the same numbers
            return torch.randn(*shape, generator=gen).to(self.device, self.dtype)

        T, B = case.T, case.B
        x = randn(T, B, case.I)
        self.lengths = None
        if case.lengths is not None:
            lo, hi = case.lengths
            lengths = torch.randint(lo, hi + 1, (B,), generator=gen)
            lengths[int(torch.randint(0, B, (1,), generator=gen))] = T  # the longest sequence has T steps
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            self.lengths = lengths
            self._packing = (packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            self.x = packed.data.detach().requires_grad_()
            self.input = self.pack(self.x)
            self.tokens = int(lengths.sum())
        else:
            self.x = x.requires_grad_()
            self.input = self.x
            self.tokens = B * T
        n_states = case.layers * case.directions
        self.h0 = randn(n_states, B, case.H)
        self.c0 = randn(n_states, B, case.H) if self.lstm else None
        self.hx = (self.h0, self.c0) if self.lstm else self.h0
        width = case.H * case.directions
        self.grad_out = randn(self.tokens, width) if self.lengths is not None else randn(T, B, width)
        self.grad_states = tuple(randn(n_states, B, case.H) for _ in range(2 if self.lstm else 1))
        self._oracle: dict[bool, dict[str, Tensor]] = {}

    def pack(self, data: Tensor) -> Tensor | PackedSequence:
        """``data`` (packed rows of this problem's input, or of a copy) as a PackedSequence like ``input``."""
        return data if self.lengths is None else PackedSequence(data, *self._packing)

    def oracle(self, grads: bool) -> dict[str, Tensor]:
        """fastrnn's reference loop in float64 on the same device and inputs: output, final states and, with
        ``grads``, the gradients of the input and of every parameter (keys ``grad:input``, ``grad:<name>``)."""
        if True in self._oracle:  # the fwd+bwd oracle holds the forward results too
            return self._oracle[True]
        if grads not in self._oracle:
            import fastrnn

            self._oracle.pop(False, None)
            model = fastrnn.from_torch(copy.deepcopy(self.module).double(), backend="reference")
            x = self.x.detach().double().requires_grad_(grads)
            hx = tuple(s.double() for s in self.hx) if self.lstm else self.hx.double()
            with torch.set_grad_enabled(grads):
                out, states = split_output(*model(self.pack(x), hx), self.lstm)
            res = {"output": out.detach(), "h_n": states[0].detach()}
            if self.lstm:
                res["c_n"] = states[1].detach()
            if grads:
                torch.autograd.backward([out, *states], [self.grad_out.double(),
                                                         *(g.double() for g in self.grad_states)])
                res["grad:input"] = x.grad
                res.update({f"grad:{name}": p.grad for name, p in model.named_parameters()})
            self._oracle[grads] = res
        return self._oracle[grads]
