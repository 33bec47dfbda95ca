"""torch.nn parity harness: build a torch.nn module and its fastrnn twin, run both, compare everything.

A :class:`Case` names one point of the conformance grid (cell kind, layers, directions, bias, batch_first,
hx given or None, proj_size, packed sorted/unsorted, unbatched, T, B, sizes). :func:`check_module_parity`
copies the torch.nn module's weights into fastrnn, feeds both the same inputs, puts the same random upstream
gradient on the output and on every final state, and compares output, h_n, c_n and the gradients of the
input, h0, c0 and every parameter (matched by name).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, fields

import torch
from helpers import assert_close
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

MODES = ("lstm", "gru", "rnn_tanh", "rnn_relu")
CELL_MODES = MODES


@contextlib.contextmanager
def one_thread():
    """Run torch single-threaded: the test sizes are tiny, and intra-op threads only fight over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def has_triton_recurrence() -> bool:
    """True once the Triton backend exists (``fastrnn.ops.recurrence``); triton tests skip until then."""
    try:
        ops = importlib.import_module("fastrnn.ops")
    except Exception:  # a half-written ops package must not break the rest of the suite
        return False
    return callable(getattr(ops, "recurrence", None))


def triton_device() -> torch.device:
    """Where backend='triton' runs in tests: CUDA when present, else the CPU interpreter (conftest sets it)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Case:
    mode: str = "lstm"
    I: int = 4  # noqa: E741
    H: int = 7
    L: int = 1
    bidir: bool = False
    bias: bool = True
    batch_first: bool = False
    hx: bool = True  # pass h0 (and c0) explicitly, else None
    proj: int = 0
    packed: str | None = None  # None | "sorted" | "unsorted"
    short: bool = False  # packed: the longest sequence is shorter than the padded T
    unbatched: bool = False
    T: int = 5
    B: int = 3
    xscale: float = 1.0  # input magnitude: large values saturate the gates

    def __str__(self) -> str:
        default = Case(mode=self.mode)
        parts = [self.mode] + [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                               if f.name != "mode" and getattr(self, f.name) != getattr(default, f.name)]
        return "-".join(parts)

    @property
    def directions(self) -> int:
        return 2 if self.bidir else 1

    @property
    def out_size(self) -> int:
        return self.proj or self.H


def torch_module(case: Case, dtype=torch.float64, device="cpu") -> nn.Module:
    kw = dict(num_layers=case.L, bias=case.bias, batch_first=case.batch_first, bidirectional=case.bidir,
              dtype=dtype, device=device)
    if case.mode == "lstm":
        return nn.LSTM(case.I, case.H, proj_size=case.proj, **kw)
    if case.mode == "gru":
        return nn.GRU(case.I, case.H, **kw)
    return nn.RNN(case.I, case.H, nonlinearity=case.mode[4:], **kw)


def fastrnn_module(case: Case, dtype=torch.float64, device="cpu", backend=None) -> nn.Module:
    kw = dict(num_layers=case.L, bias=case.bias, batch_first=case.batch_first, bidirectional=case.bidir,
              dtype=dtype, device=device, backend=backend)
    if case.mode == "lstm":
        return fastrnn.LSTM(case.I, case.H, proj_size=case.proj, **kw)
    if case.mode == "gru":
        return fastrnn.GRU(case.I, case.H, **kw)
    return fastrnn.RNN(case.I, case.H, nonlinearity=case.mode[4:], **kw)


def lengths_for(case: Case, gen: torch.Generator) -> list[int]:
    """Unequal lengths in [1, T]; descending for "sorted", the longest in the middle for "unsorted"."""
    top = case.T - 1 if case.short and case.T > 1 else case.T
    lengths = torch.randint(1, top + 1, (case.B,), generator=gen)
    if case.B > 1:
        lengths[0] = 1  # always at least one short sequence and one full one
    lengths[case.B // 2] = top
    if case.packed == "sorted":
        lengths = lengths.sort(descending=True).values
    return lengths.tolist()


@dataclass
class Inputs:
    x: torch.Tensor  # the leaf the gradient is taken against ([T, B, I], [B, T, I] or unbatched [T, I])
    h0: torch.Tensor | None
    c0: torch.Tensor | None
    lengths: list[int] | None


def make_inputs(case: Case, dtype=torch.float64, device="cpu", seed: int = 1) -> Inputs:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    shape = (case.T, case.I) if case.unbatched else (case.B, case.T, case.I) if case.batch_first else \
        (case.T, case.B, case.I)
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * case.xscale).to(dtype=dtype, device=device)
    h0 = c0 = None
    if case.hx:
        states = (case.L * case.directions,) if case.unbatched else (case.L * case.directions, case.B)
        h0 = rand(*states, case.out_size)
        if case.mode == "lstm":
            c0 = rand(*states, case.H)
    lengths = lengths_for(case, gen) if case.packed else None
    return Inputs(x, h0, c0, lengths)


def clone_inputs(inp: Inputs, dtype=None) -> Inputs:
    """Fresh leaves (requires_grad) with the same values, optionally cast."""

    def leaf(t):
        return None if t is None else t.detach().to(dtype or t.dtype).clone().requires_grad_(True)

    return Inputs(leaf(inp.x), leaf(inp.h0), leaf(inp.c0), inp.lengths)


def forward(module: nn.Module, case: Case, inp: Inputs):
    """Run ``module``; returns (output tensor, output PackedSequence or None, h_n, c_n or None)."""
    x = inp.x
    if case.packed:
        x = pack_padded_sequence(inp.x, inp.lengths, batch_first=case.batch_first,
                                 enforce_sorted=case.packed == "sorted")
    hx = None
    if case.hx:
        hx = (inp.h0, inp.c0) if case.mode == "lstm" else inp.h0
    out, hidden = module(x, hx)
    h_n, c_n = hidden if case.mode == "lstm" else (hidden, None)
    if case.packed:
        assert isinstance(out, PackedSequence), f"packed input gave {type(out).__name__}"
        return out.data, out, h_n, c_n
    return out, None, h_n, c_n


def run(module: nn.Module, case: Case, inp: Inputs, grad_seed: int = 2, backward: bool = True,
        grad_dtype: torch.dtype | None = None) -> dict:
    """Forward (and backward with random upstream gradients); every result by name.

    The upstream gradients are drawn in fp64 and rounded through ``grad_dtype`` (default: the result's dtype),
    so an fp64 oracle can be fed exactly the gradients a low-precision run sees.
    """
    out, packed, h_n, c_n = forward(module, case, inp)
    res = {"output": out, "h_n": h_n, "c_n": c_n}
    if packed is not None:
        res["packed"] = packed
    if not backward:
        return res
    gen = torch.Generator().manual_seed(grad_seed)
    loss = 0
    for t in (out, h_n, c_n):
        if t is not None:
            g = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(grad_dtype or t.dtype).to(t.dtype)
            loss = loss + (t * g).sum()
    loss.backward()
    res["grad input"] = inp.x.grad
    res["grad h0"] = None if inp.h0 is None else inp.h0.grad
    res["grad c0"] = None if inp.c0 is None else inp.c0.grad
    for name, p in module.named_parameters():
        res[f"grad {name}"] = p.grad
    return res


def compare(ref: dict, out: dict, dtype: torch.dtype, scale: float = 1.0, label: str = "",
            x_scale: float = 1.0) -> None:
    """Compare every named result. ``x_scale``: the input magnitude, which scales the gradients of the
    input weights (sums of x * delta) and so their absolute rounding error."""
    assert set(ref) == set(out), f"{label}results differ: {sorted(set(ref) ^ set(out))}"
    if "packed" in ref:
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            r, o = getattr(ref["packed"], field), getattr(out["packed"], field)
            assert (r is None and o is None) or torch.equal(r, o), f"{label}PackedSequence.{field}: {o} != {r}"
    for name in ref:
        if name == "packed":
            continue
        if ref[name] is not None and out[name] is not None:
            assert out[name].dtype == dtype, f"{label}{name}: dtype {out[name].dtype}, expected {dtype}"
        factor = max(1.0, x_scale) if name.startswith("grad weight_ih") else 1.0
        assert_close(label + name, ref[name], out[name], dtype=dtype, scale=scale * factor)


def check_module_parity(case: Case, backend: str | None, dtype=torch.float64, backward: bool = True,
                        device="cpu", scale: float = 1.0) -> None:
    """fastrnn (weights copied from torch.nn) vs torch.nn in ``dtype`` and vs the fp64 torch.nn oracle.

    Same-dtype torch.nn: always for fp64/fp32, and for the torch-native backends ("auto"/"torch" on CPU run
    torch's own operators, so they must match torch.nn in every dtype).
    fp64 torch.nn on the same (rounded) weights and inputs: for every dtype below fp64, except the gradients
    of the torch-native backends in fp16/bf16 (torch's own low-precision backward is not that accurate).
    """
    native = backend in ("auto", "torch") and torch.device(device).type == "cpu"
    ref64 = torch_module(case, torch.float64, device)
    inp64 = make_inputs(case, torch.float64, device)
    ref = ref64 if dtype == torch.float64 else torch_module(case, dtype, device)
    if ref is not ref64:
        ref.load_state_dict(ref64.state_dict())
        ref64.load_state_dict(ref.state_dict())  # the fp64 oracle sees exactly the rounded weights
    mod = fastrnn.from_torch(ref, backend=backend)
    assert type(mod).__module__.startswith("fastrnn") and next(mod.parameters()).dtype == dtype
    inp = clone_inputs(inp64, dtype)
    got = run(mod, case, inp, backward=backward)
    if dtype in (torch.float64, torch.float32) or native:
        expected = run(ref, case, clone_inputs(inp64, dtype), backward=backward)
        compare(expected, got, dtype, scale, label="vs torch.nn same dtype: ", x_scale=case.xscale)
    if dtype != torch.float64 and not (native and backward and dtype in (torch.float16, torch.bfloat16)):
        oracle = run(ref64, case, clone_inputs(inp, torch.float64), backward=backward, grad_dtype=dtype)
        compare(oracle, got, dtype, scale, label="vs fp64 torch.nn: ", x_scale=case.xscale)

