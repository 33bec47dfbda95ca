"""Benchmark harness and the ``fastrnn bench`` command: fastrnn against cuDNN, ATen, a cell loop and FlashRNN.

The protocol (``shared/BENCHMARKS.md``): every provider runs in the same process on the same inputs and
weights; a provider's result is checked against an fp64 oracle *before* it is timed, and a provider that
fails the check is never timed. GPU timings use ``triton.testing.do_bench`` (CUDA events, quantiles
0.5 / 0.2 / 0.8, ``grad_to_none``). ``--device cpu`` is a smoke run of the plumbing only: it uses a
``time.perf_counter`` timer, labels every row as a CPU smoke run, and writes no files unless ``--out`` is given.

Pieces, in order:
    GRID         the standard grid as data (:class:`Case` per shape; ``dtypes`` per case)
    Problem      what every provider of one (case, dtype) shares: the torch.nn module (torch.nn init),
                 random inputs and initial states, random upstream gradients, the fp64 oracle
    PROVIDERS    registry name -> :class:`Provider`; ``register_provider`` adds one (a later fastrnn
                 execution strategy registers itself here, or is reached as ``fastrnn:<backend>``)
    check        relative L2 error of output, final states and (fwd+bwd) every gradient vs the oracle
    run          check -> peak memory -> time, one row per (case, dtype, mode, provider)
    write_csv / plot / format_table, and the CLI (``add_arguments`` / ``main``)

FLOP convention (per layer and direction; N = B*T, or the number of valid tokens for packed input):
    forward   2*N*H*G (recurrence, G = gates*H: 4H LSTM, 3H GRU, H RNN) + 2*N*I_l*G (input projection,
              I_l = I for layer 0, directions*H above it); pointwise gate math is not counted
    fwd+bwd   3x the forward (the backward computes the gradients of both operands of each GEMM: ~2x)
    tflops    FLOPs / ms_p50;   us_per_step = ms_p50 * 1000 / T;   ratio_vs_cudnn = ms_p50 / cudnn's ms_p50
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import datetime
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

#: the columns of a result row, in order (shared/BENCHMARKS.md)
COLUMNS = (
    "bench", "cell", "B", "T", "I", "H", "layers", "bidir", "dtype", "mode", "provider",
    "ms_p50", "ms_p20", "ms_p80", "peak_mb", "tflops", "us_per_step", "ratio_vs_cudnn",
    "device", "torch", "triton", "cuda", "fastrnn_commit", "date",
)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
QUANTILES = (0.5, 0.2, 0.8)

#: largest relative L2 error ||out - oracle|| / ||oracle|| accepted per dtype, for the output, the final states
#: and every gradient. The oracle is torch.nn in float64. fp32 allows for TF32 GEMMs (cuDNN and tl.dot use
#: them by default); a broken kernel is off by O(1).
TOLERANCE = {"fp32": 1e-2, "fp16": 2e-2, "bf16": 5e-2}

CPU_DEVICE_LABEL = "cpu (smoke run, perf_counter timer, not a benchmark)"
#: the fastrnn_commit column, where the tree has no .git (e.g. a copy sent to a GPU machine)
COMMIT_ENV_VAR = "FASTRNN_COMMIT"


# ---------------------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape. Input [T, B, I] (time-major, as torch.nn's default), hidden H.

    Args:
        bench: the benchmark's name in the grid (the CSV's ``bench`` column); ``--grid`` selects by it.
        cell: ``lstm | gru | rnn_tanh | rnn_relu``.
        B, T, H, I: batch, time steps (the longest sequence when packed), hidden, input size.
        layers, bidir: stacking.
        dtypes: the dtypes this case is run in (keys of :data:`DTYPES`).
        lengths: ``(lo, hi)`` for PackedSequence input with lengths ~ U[lo, hi] (hi == T), else None.
    """

    bench: str
    cell: str
    B: int
    T: int
    H: int
    I: int
    layers: int = 1
    bidir: bool = False
    dtypes: tuple[str, ...] = ("fp32",)
    lengths: tuple[int, int] | None = None

    @property
    def directions(self) -> int:
        return 2 if self.bidir else 1

    @property
    def id(self) -> str:
        s = f"{self.bench}-{self.cell}-B{self.B}-T{self.T}-H{self.H}-I{self.I}"
        if self.layers != 1:
            s += f"-L{self.layers}"
        if self.bidir:
            s += "-bidir"
        if self.lengths:
            s += f"-packed{self.lengths[0]}_{self.lengths[1]}"
        return s


def _standard_grid() -> tuple[Case, ...]:
    lstm_default = dict(B=64, T=100, H=512, I=512, dtypes=("fp32",))
    flash_shape = dict(B=16, T=1024, H=768, I=768, dtypes=("fp16", "bf16"))
    cases = [
        Case("fastrnns-default", "lstm", **lstm_default),
        Case("flashrnn-shape", "lstm", **flash_shape),
        *(Case("small-batch", "lstm", B=b, T=1024, H=h, I=h, dtypes=("bf16", "fp32"))
          for b in (1, 4, 8) for h in (256, 512, 1024)),
        Case("large-batch", "lstm", B=256, T=256, H=1024, I=1024, dtypes=("bf16",)),
        Case("packed", "lstm", B=32, T=1000, H=512, I=512, dtypes=("fp32",), lengths=(500, 1000)),
    ]
    for cell in ("gru", "rnn_tanh"):
        cases += [Case(cell, cell, **lstm_default), Case(cell, cell, **flash_shape)]
    cases.append(Case("deep/bidir", "lstm", B=32, T=256, H=512, I=512, layers=2, bidir=True, dtypes=("bf16",)))
    return tuple(cases)


#: the standard grid of shared/BENCHMARKS.md (LSTM unless said; 1 layer, unidirectional, I = H)
GRID: tuple[Case, ...] = _standard_grid()
GRID_NAMES: tuple[str, ...] = tuple(dict.fromkeys(c.bench for c in GRID))
_GRID_ALIASES = {"deep-bidir": "deep/bidir", "deep": "deep/bidir", "bidir": "deep/bidir"}


def select_grid(names: Iterable[str] | None = None, cells: Iterable[str] | None = None,
                dtypes: Iterable[str] | None = None) -> list[tuple[Case, str]]:
    """The (case, dtype) pairs of the named benchmarks (all when None), filtered by cell and dtype.

    Raises:
        ValueError: an unknown benchmark name.
    """
    wanted = None
    if names is not None:
        wanted = []
        for name in names:
            name = _GRID_ALIASES.get(name, name)
            if name not in GRID_NAMES:
                raise ValueError(f"unknown benchmark {name!r}; the grid has: {', '.join(GRID_NAMES)}")
            wanted.append(name)
    cells = None if cells is None else set(cells)
    dtypes = None if dtypes is None else list(dtypes)
    out = []
    for case in GRID:
        if (wanted is None or case.bench in wanted) and (cells is None or case.cell in cells):
            out += [(case, dt) for dt in case.dtypes if dtypes is None or dt in dtypes]
    return out


def flops(case: Case, mode: str, tokens: int | None = None) -> float:
    """FLOPs of one call in ``mode`` (see the module docstring for the convention)."""
    n = tokens if tokens is not None else case.B * case.T
    g = GATES[case.cell] * case.H
    total = 0
    for layer in range(case.layers):
        i_l = case.I if layer == 0 else case.H * case.directions
        total += case.directions * 2 * n * g * (case.H + i_l)
    return float(total * (3 if mode == "fwd+bwd" else 1))


# ---------------------------------------------------------------------------------------------------------
# What all providers of one (case, dtype) share
# ---------------------------------------------------------------------------------------------------------
def torch_module(case: Case, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """The torch.nn module of ``case``, initialised as torch.nn does."""
    kw = dict(num_layers=case.layers, bidirectional=case.bidir, device=device, dtype=dtype)
    if case.cell == "lstm":
        return nn.LSTM(case.I, case.H, **kw)
    if case.cell == "gru":
        return nn.GRU(case.I, case.H, **kw)
    return nn.RNN(case.I, case.H, nonlinearity=case.cell.removeprefix("rnn_"), **kw)


class Problem:
    """Inputs, weights and upstream gradients shared by every provider of one (case, dtype), and the oracle.

    Attributes:
        module: the torch.nn module (torch.nn init); providers copy its weights.
        x: the input leaf (requires grad): [T, B, I], or the packed data [N, I] for packed cases.
        input: what a torch.nn module takes: ``x`` or a PackedSequence around it.
        h0, c0: random initial states [L*D, B, H] (c0 None unless LSTM); ``hx`` in torch.nn's form.
        lengths: [B] int64 on the CPU for packed cases, else None. tokens: valid (b, t) pairs.
        grad_out, grad_states: random upstream gradients for the output (data) and each final state.
    """

    def __init__(self, case: Case, dtype: str, device: torch.device | str, seed: int = 0) -> None:
        self.case, self.dtype_name, self.dtype, self.device = case, dtype, DTYPES[dtype], torch.device(device)
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
            self.x = packed.data.detach().requires_grad_()
            self.input = PackedSequence(self.x, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
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

    def oracle(self, grads: bool) -> dict[str, Tensor]:
        """torch.nn in float64 on the same device and inputs (cuDNN on CUDA): output, final states and, with
        ``grads``, the gradients of the input and of every parameter (keys ``grad:input``, ``grad:<name>``)."""
        if True in self._oracle:  # the fwd+bwd oracle holds the forward results too
            return self._oracle[True]
        if grads not in self._oracle:
            self._oracle.pop(False, None)
            m = copy.deepcopy(self.module).double()
            x = self.x.detach().double().requires_grad_(grads)
            inp = PackedSequence(x, self.input.batch_sizes, self.input.sorted_indices,
                                 self.input.unsorted_indices) if self.lengths is not None else x
            hx = tuple(s.double() for s in self.hx) if self.lstm else self.hx.double()
            with torch.set_grad_enabled(grads):
                out, hidden = m(inp, hx)
            out = out.data if isinstance(out, PackedSequence) else out
            states = tuple(hidden) if self.lstm else (hidden,)
            res = {"output": out.detach(), "h_n": states[0].detach()}
            if self.lstm:
                res["c_n"] = states[1].detach()
            if grads:
                torch.autograd.backward([out, *states], [self.grad_out.double(),
                                                         *(g.double() for g in self.grad_states)])
                res["grad:input"] = x.grad
                res.update({f"grad:{name}": p.grad for name, p in m.named_parameters()})
            self._oracle[grads] = res
        return self._oracle[grads]


# ---------------------------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------------------------
class Unsupported(Exception):
    """Raised by a provider's ``build`` for a case, dtype or device it cannot run (the row is skipped)."""


@dataclasses.dataclass
class Runner:
    """A provider's model built for one :class:`Problem`.

    Attributes:
        forward: runs the model on the problem's input and initial states; returns ``(output, states)`` with
            output [T, B, D*H] (the packed data [N, D*H] for packed input) and states ``(h_n,)`` or ``(h_n, c_n)``.
        params: torch.nn parameter name -> the leaf tensor whose ``.grad`` the backward fills.
        context: a context manager factory entered around every forward and backward (e.g. cuDNN disabled).
    """

    forward: Callable[[], tuple[Tensor, tuple[Tensor, ...]]]
    params: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclasses.dataclass(frozen=True)
class Provider:
    """A registered provider: ``build(problem, variant) -> Runner`` (raise :class:`Unsupported` to skip).

    ``variant`` is the text after ``:`` in a provider spec (``fastrnn:reference``), or None.
    ``default``: part of the default provider list.
    """

    name: str
    build: Callable[[Problem, str | None], Runner]
    default: bool = True
    doc: str = ""


PROVIDERS: dict[str, Provider] = {}


def register_provider(name: str, *, default: bool = True, doc: str = ""):
    """Decorator: register ``build(problem, variant) -> Runner`` under ``name``."""

    def deco(build):
        PROVIDERS[name] = Provider(name, build, default, doc)
        return build

    return deco


def build_runner(spec: str, problem: Problem) -> Runner:
    """The runner of the provider ``spec`` (``name`` or ``name:variant``) for ``problem``."""
    name, _, variant = spec.partition(":")
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; registered: {', '.join(PROVIDERS)}")
    return PROVIDERS[name].build(problem, variant or None)


def _module_runner(model: nn.Module, problem: Problem, context=contextlib.nullcontext) -> Runner:
    def forward():
        out, hidden = model(problem.input, problem.hx)
        out = out.data if isinstance(out, PackedSequence) else out
        return out, (tuple(hidden) if problem.lstm else (hidden,))

    return Runner(forward, dict(model.named_parameters()), context)


def _need_cuda(problem: Problem, what: str) -> None:
    if problem.device.type != "cuda":
        raise Unsupported(f"{what} needs a CUDA device")


def fastrnn_strategies() -> tuple[str, ...]:
    """fastrnn's Triton execution strategies other than ``auto`` (empty when fastrnn.ops cannot be imported)."""
    try:
        from fastrnn.ops.strategy import STRATEGIES
    except Exception:  # noqa: BLE001 - no triton / a broken ops package: no strategy providers, not a crash
        return ()
    return tuple(s for s in STRATEGIES if s != "auto")


@register_provider("fastrnn", doc="fastrnn module with its default backend; fastrnn:<backend> picks a backend "
                                  "and fastrnn:<strategy> (e.g. fastrnn:persistent) a Triton execution strategy")
def _build_fastrnn(problem: Problem, variant: str | None) -> Runner:
    import fastrnn

    if variant is None or variant in fastrnn.BACKENDS:
        return _module_runner(fastrnn.from_torch(problem.module, backend=variant), problem)
    if variant not in fastrnn_strategies():
        raise ValueError(f"fastrnn:<variant> must name a backend {fastrnn.BACKENDS} or a Triton strategy "
                         f"{fastrnn_strategies()}, got {variant!r}")
    if problem.device.type != "cuda":
        raise Unsupported(f"fastrnn:{variant} (a Triton strategy) is benchmarked on CUDA only")
    from fastrnn.ops.strategy import use_strategy

    model = fastrnn.from_torch(problem.module, backend="triton")
    return _module_runner(model, problem, lambda: use_strategy(variant))


def default_providers(device: torch.device | str = "cuda") -> list[str]:
    """The default provider list: the registered defaults, plus ``fastrnn:<strategy>`` for each Triton execution
    strategy when there is more than one (on CUDA; BENCHMARKS.md asks for each of them)."""
    names = [n for n, p in PROVIDERS.items() if p.default]
    strategies = fastrnn_strategies() if torch.device(device).type == "cuda" else ()
    if len(strategies) > 1 and "fastrnn" in names:
        i = names.index("fastrnn") + 1
        names[i:i] = [f"fastrnn:{s}" for s in strategies]
    return names


@register_provider("cudnn", doc="torch.nn module on CUDA, cuDNN enabled")
def _build_cudnn(problem: Problem, variant: str | None) -> Runner:
    _need_cuda(problem, "cudnn")
    if not torch.backends.cudnn.is_available():
        raise Unsupported("cuDNN is not available in this torch build")
    model = copy.deepcopy(problem.module)
    model.flatten_parameters()
    return _module_runner(model, problem, lambda: torch.backends.cudnn.flags(enabled=True))


@register_provider("aten", doc="torch.nn module on CUDA under torch.backends.cudnn.flags(enabled=False)")
def _build_aten(problem: Problem, variant: str | None) -> Runner:
    _need_cuda(problem, "aten")
    return _module_runner(copy.deepcopy(problem.module), problem, lambda: torch.backends.cudnn.flags(enabled=False))


def _loop_runner(problem: Problem, compiled: bool) -> Runner:
    """A Python loop over torch.nn cells (one per layer and direction) with the module's weights copied."""
    case, m = problem.case, problem.module
    cell_cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(case.cell, nn.RNNCell)
    extra = {} if case.cell in ("lstm", "gru") else {"nonlinearity": case.cell.removeprefix("rnn_")}
    cells, steps, params = [], [], {}
    for layer in range(case.layers):
        for direction in range(case.directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            i_l = case.I if layer == 0 else case.H * case.directions
            cell = cell_cls(i_l, case.H, device=problem.device, dtype=problem.dtype, **extra)
            with torch.no_grad():
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, kind).copy_(getattr(m, kind + suffix))
                    params[kind + suffix] = getattr(cell, kind)
            cells.append(cell)
            steps.append(torch.compile(cell, dynamic=False) if compiled else cell)
    live = None
    if problem.lengths is not None:  # [T, B, 1]: step t of sequence b is real
        live = (torch.arange(case.T)[:, None] < problem.lengths[None, :]).unsqueeze(-1).to(problem.device)

    def forward():
        x = pad_packed_sequence(problem.input, total_length=case.T)[0] if live is not None else problem.input
        h_n, c_n = [], []
        for layer in range(case.layers):
            outs = []
            for direction in range(case.directions):
                k = layer * case.directions + direction
                step = steps[k]
                h = problem.h0[k]
                c = problem.c0[k] if problem.lstm else None
                ys: list[Tensor] = [x] * case.T
                for t in range(case.T - 1, -1, -1) if direction else range(case.T):
                    if problem.lstm:
                        h_new, c_new = step(x[t], (h, c))
                    else:
                        h_new, c_new = step(x[t], h), None
                    if live is None:
                        h, c = h_new, c_new
                        ys[t] = h
                    else:  # PackedSequence semantics: past its length a sequence keeps its state, outputs 0
                        h = torch.where(live[t], h_new, h)
                        c = None if c is None else torch.where(live[t], c_new, c)
                        ys[t] = torch.where(live[t], h_new, 0.0)
                outs.append(torch.stack(ys))
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if live is not None:
            x = pack_padded_sequence(x, problem.lengths, enforce_sorted=False).data
        states = (torch.stack(h_n), torch.stack(c_n)) if problem.lstm else (torch.stack(h_n),)
        return x, states

    return Runner(forward, params)


@register_provider("loop", doc="Python loop over torch.nn.LSTMCell/GRUCell/RNNCell, weights copied")
def _build_loop(problem: Problem, variant: str | None) -> Runner:
    return _loop_runner(problem, compiled=False)


@register_provider("compile", default=False, doc="the loop provider with each cell under torch.compile")
def _build_compile(problem: Problem, variant: str | None) -> Runner:
    return _loop_runner(problem, compiled=True)


_FLASHRNN_FUNCTION = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "elman"}
_FLASHRNN_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@register_provider("flashrnn", doc="FlashRNN (pip install flashrnn), dense (1 head); flashrnn:<backend>")
def _build_flashrnn(problem: Problem, variant: str | None) -> Runner:
    """FlashRNN takes pre-projected inputs Wx [B, T, G, NH, D] and R [G, NH, D, D]; dense means NH = 1.

    The timed function includes the input projection (one GEMM, as every other provider does it) and the
    re-layout of W_hh into R, so gradients reach the same torch.nn parameters and are checked like the rest.
    The mapping R[g, 0] = W_hh[g*H:(g+1)*H].T is checked against the oracle before anything is timed.
    """
    _need_cuda(problem, "flashrnn")
    case = problem.case
    if case.cell not in _FLASHRNN_FUNCTION:
        raise Unsupported(f"flashrnn has no {case.cell} cell")
    if case.layers != 1 or case.bidir or case.lengths is not None:
        raise Unsupported("flashrnn runs one unidirectional layer over unpacked sequences")
    if problem.dtype_name == "fp32" and variant is None:
        raise Unsupported("flashrnn's fused kernels are benchmarked in fp16/bf16 (name flashrnn:<backend> to try fp32)")
    try:
        from flashrnn import flashrnn as flashrnn_fn
    except ImportError as e:
        raise Unsupported(f"flashrnn is not installed ({e})") from None
    backend = variant or "cuda_fused"
    gates, H, B, T = GATES[case.cell], case.H, case.B, case.T
    m = problem.module
    params = {name: p.detach().clone().requires_grad_() for name, p in m.named_parameters()}
    w_ih, w_hh, b_ih, b_hh = (params[k + "_l0"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward():
        wx = nn.functional.linear(problem.x, w_ih, b_ih)  # [T, B, G*H]
        wx = wx.transpose(0, 1).reshape(B, T, gates, 1, H)
        r = w_hh.view(gates, 1, H, H).transpose(2, 3).contiguous()  # [G, 1, D_in, D_out]
        b = b_hh.view(gates, 1, H)
        states = torch.stack([s[0] for s in ((problem.h0, problem.c0) if problem.lstm else (problem.h0,))])
        states = states.view(len(states), B, 1, 1, H)
        h, last = flashrnn_fn(wx, r, b, states=states, function=_FLASHRNN_FUNCTION[case.cell], backend=backend,
                              dtype=_FLASHRNN_DTYPE[problem.dtype_name])
        n_states = 2 if problem.lstm else 1
        if h.dim() != 5 or h.shape[0] != n_states or h.shape[1] != B or h.shape[2] != T:
            raise Unsupported(f"unexpected flashrnn output shape {tuple(h.shape)} (expected [S, B, T, 1, H])")
        out = h[0].reshape(B, T, H).transpose(0, 1)
        final = tuple(last[i].reshape(1, B, H) for i in range(n_states))
        return out, final

    return Runner(forward, params)


# ---------------------------------------------------------------------------------------------------------
# Check, measure, time
# ---------------------------------------------------------------------------------------------------------
def _clear_grads(problem: Problem, runner: Runner) -> None:
    problem.x.grad = None
    for p in runner.params.values():
        p.grad = None


def step_fn(runner: Runner, problem: Problem, mode: str) -> tuple[Callable[[], None], list[Tensor]]:
    """The function to time for ``mode``, and the tensors whose grads to reset between calls."""
    if mode == "fwd":
        def run():
            with torch.no_grad(), runner.context():
                runner.forward()
    elif mode == "fwd+bwd":
        def run():
            with runner.context():
                out, states = runner.forward()
                torch.autograd.backward([out, *states], [problem.grad_out, *problem.grad_states])
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return run, [problem.x, *runner.params.values()]


def _relative_error(out: Tensor, ref: Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return math.inf
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


def check(runner: Runner, problem: Problem, mode: str) -> str | None:
    """Run ``runner`` once in ``mode`` and compare with the fp64 oracle; None when correct, else why not.

    Compared: the output and final states, and for fwd+bwd the input gradient and the gradient of every
    parameter the provider exposes, each by relative L2 error against :data:`TOLERANCE` of the dtype.
    """
    grads = mode == "fwd+bwd"
    ref = problem.oracle(grads)
    _clear_grads(problem, runner)
    with torch.set_grad_enabled(grads), runner.context():
        out, states = runner.forward()
        got = {"output": out, "h_n": states[0]}
        if problem.lstm:
            got["c_n"] = states[1] if len(states) > 1 else None
        if grads:
            torch.autograd.backward([out, *states], [problem.grad_out, *problem.grad_states])
            got["grad:input"] = problem.x.grad
            got.update({f"grad:{name}": p.grad for name, p in runner.params.items()})
    tol = TOLERANCE[problem.dtype_name]
    problems = []
    for name, value in got.items():
        if name not in ref:
            problems.append(f"{name}: not in the oracle")
            continue
        if value is None:
            problems.append(f"{name}: missing")
            continue
        if tuple(value.shape) != tuple(ref[name].shape):
            problems.append(f"{name}: shape {tuple(value.shape)} != {tuple(ref[name].shape)}")
            continue
        err = _relative_error(value, ref[name])
        if not err <= tol:
            problems.append(f"{name}: rel L2 err {err:.2e} > {tol:.0e}")
    _clear_grads(problem, runner)
    if problems:
        return f"wrong result vs fp64 torch.nn ({mode}, {problem.dtype_name}): " + "; ".join(problems)
    return None


def peak_memory_mb(fn: Callable[[], None], reset: Callable[[], None]) -> float | None:
    """Peak CUDA memory allocated by one call above what was allocated before it, in MiB (None off CUDA)."""
    if not torch.cuda.is_available():
        return None
    reset()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    reset()
    return peak / 2**20


def time_cuda(fn: Callable[[], None], grads: list[Tensor], warmup: float, rep: float) -> tuple[float, ...]:
    """(ms_p50, ms_p20, ms_p80) by triton.testing.do_bench (CUDA events)."""
    from triton.testing import do_bench

    return tuple(float(v) for v in do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grads,
                                            quantiles=list(QUANTILES)))


def time_cpu(fn: Callable[[], None], grads: list[Tensor], warmup: float, rep: float,
             max_runs: int = 1000) -> tuple[float, ...]:
    """(ms_p50, ms_p20, ms_p80) by time.perf_counter: the CPU smoke-run fallback (at least 3 timed runs)."""

    def reset():
        for g in grads:
            g.grad = None

    end = time.perf_counter() + warmup / 1e3
    reset()
    fn()
    while time.perf_counter() < end:
        reset()
        fn()
    samples: list[float] = []
    end = time.perf_counter() + rep / 1e3
    while (len(samples) < 3 or time.perf_counter() < end) and len(samples) < max_runs:
        reset()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    reset()
    q = torch.tensor(samples, dtype=torch.float64).quantile(torch.tensor(QUANTILES, dtype=torch.float64))
    return tuple(float(v) for v in q)


@dataclasses.dataclass
class Skip:
    """A (case, dtype, mode, provider) that produced no row, and why."""

    case: Case
    dtype: str
    mode: str
    provider: str
    reason: str
    kind: str = "skipped"  # skipped (unsupported here), error (raised), wrong (failed the correctness check)

    @property
    def wrong(self) -> bool:
        return self.kind == "wrong"

    def __str__(self) -> str:
        return f"{self.kind.upper()}: {self.case.id} {self.dtype} {self.mode} {self.provider}: {self.reason}"


def environment(device: torch.device) -> dict[str, str]:
    """The device/version/commit/date columns shared by every row of a run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = CPU_DEVICE_LABEL
    commit = os.environ.get(COMMIT_ENV_VAR, "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda or "",
            "fastrnn_commit": commit, "date": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def run(
    cases: Sequence[tuple[Case, str]],
    providers: Sequence[str],
    modes: Sequence[str] = MODES,
    device: torch.device | str = "cuda",
    warmup: float = 25,
    rep: float = 100,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict], list[Skip]]:
    """Check, measure and time every (case, dtype) x mode x provider. Returns (rows, skips).

    Rows hold :data:`COLUMNS`; a missing number (no cudnn row to compare with, no CUDA memory counter) is None.
    A provider that raises :class:`Unsupported`, fails to build or run, or fails :func:`check` is never timed.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    env = environment(device)
    timer = time_cuda if cuda else time_cpu
    log = log or (lambda s: None)
    rows: list[dict] = []
    skips: list[Skip] = []
    for case, dtype in cases:
        problem = Problem(case, dtype, device)
        runners: dict[str, Runner | Skip] = {}
        for mode in modes:
            group = []
            for spec in providers:
                if spec not in runners:
                    try:
                        runners[spec] = build_runner(spec, problem)
                    except Unsupported as e:
                        runners[spec] = Skip(case, dtype, mode, spec, str(e))
                    except Exception as e:  # a provider that cannot even be built is reported, not fatal
                        runners[spec] = Skip(case, dtype, mode, spec, f"build failed: {type(e).__name__}: {e}",
                                             "error")
                runner = runners[spec]
                if isinstance(runner, Skip):
                    skips.append(dataclasses.replace(runner, mode=mode))
                    log(str(skips[-1]))
                    continue
                fn, grads = step_fn(runner, problem, mode)

                def reset(grads=grads):
                    for g in grads:
                        g.grad = None

                try:
                    wrong = check(runner, problem, mode)
                    if wrong is None:  # only a result that passed the check is ever timed
                        peak = peak_memory_mb(fn, reset) if cuda else None
                        p50, p20, p80 = timer(fn, grads, warmup, rep)
                except Unsupported as e:
                    skips.append(Skip(case, dtype, mode, spec, str(e)))
                    log(str(skips[-1]))
                    continue
                except Exception as e:  # a crash (or out of memory) in one provider does not end the run
                    reset()
                    if cuda:
                        torch.cuda.empty_cache()
                    skips.append(Skip(case, dtype, mode, spec, f"failed to run: {type(e).__name__}: {e}", "error"))
                    log(str(skips[-1]))
                    continue
                if wrong:
                    skips.append(Skip(case, dtype, mode, spec, wrong, "wrong"))
                    log(str(skips[-1]))
                    continue
                f = flops(case, mode, problem.tokens)
                row = {
                    "bench": case.bench, "cell": case.cell, "B": case.B, "T": case.T, "I": case.I, "H": case.H,
                    "layers": case.layers, "bidir": case.bidir, "dtype": dtype, "mode": mode, "provider": spec,
                    "ms_p50": p50, "ms_p20": p20, "ms_p80": p80, "peak_mb": peak,
                    "tflops": f / (p50 * 1e-3) / 1e12 if p50 > 0 else None,
                    "us_per_step": p50 * 1e3 / case.T, "ratio_vs_cudnn": None, **env,
                }
                group.append(row)
                log(f"{case.id} {dtype} {mode} {spec}: {p50:.3f} ms")
            base = next((r["ms_p50"] for r in group if r["provider"] == "cudnn"), None)
            if base:
                for r in group:
                    r["ratio_vs_cudnn"] = r["ms_p50"] / base
            rows += group
        del problem, runners
        if cuda:
            torch.cuda.empty_cache()
    return rows, skips


# ---------------------------------------------------------------------------------------------------------
# Output: CSV, plot, table
# ---------------------------------------------------------------------------------------------------------
def _cell_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def device_slug(name: str) -> str:
    if name == CPU_DEVICE_LABEL:
        return "cpu-smoke"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def result_path(out_dir: Path, device_name: str, date: str | None = None) -> Path:
    """``<out>/<date>-<device-slug>.csv``; ``-2``, ``-3``, ... appended rather than overwriting a file."""
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    stem = f"{date[:10]}-{device_slug(device_name)}"
    path = out_dir / f"{stem}.csv"
    n = 2
    while path.exists():
        path = out_dir / f"{stem}-{n}.csv"
        n += 1
    return path


def write_csv(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell_text(row[c]) for c in COLUMNS])


def _label(row: dict) -> str:
    s = f"{row['bench']} {row['cell']} B{row['B']} T{row['T']} H{row['H']}"
    if row["I"] != row["H"]:
        s += f" I{row['I']}"
    return s + f" {row['dtype']} {row['mode']}"


def plot(rows: Sequence[dict], path: Path) -> None:
    """Ratio vs cuDNN per benchmark and provider (log scale, line at 1); ms_p50 when no run had cudnn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_ratio = any(r["ratio_vs_cudnn"] is not None for r in rows)
    key = "ratio_vs_cudnn" if use_ratio else "ms_p50"
    points = [r for r in rows if r[key] is not None and not (use_ratio and r["provider"] == "cudnn")]
    labels = list(dict.fromkeys(_label(r) for r in points))
    providers = list(dict.fromkeys(r["provider"] for r in points))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(labels) + 2), 5.5))
    markers = "o^sDv<>pP*X"
    for i, prov in enumerate(providers):
        xs = [labels.index(_label(r)) for r in points if r["provider"] == prov]
        ys = [r[key] for r in points if r["provider"] == prov]
        ax.scatter(xs, ys, label=prov, marker=markers[i % len(markers)], s=28)
    ax.set_yscale("log")
    if use_ratio:
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_ylabel("time / cuDNN time (ms_p50 ratio; < 1 is faster)")
    else:
        ax.set_ylabel("ms_p50 (no cudnn provider in this run)")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    env = rows[0] if rows else {}
    ax.set_title(f"fastrnn bench on {env.get('device', '')}\ntorch {env.get('torch', '')}  "
                 f"triton {env.get('triton', '')}  cuda {env.get('cuda', '') or '-'}  "
                 f"fastrnn {env.get('fastrnn_commit', '')}  {env.get('date', '')}", fontsize=8)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    if providers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


_TABLE = (("bench", "{}"), ("cell", "{}"), ("B", "{}"), ("T", "{}"), ("H", "{}"), ("I", "{}"), ("layers", "{}"),
          ("bidir", "{}"), ("dtype", "{}"), ("mode", "{}"), ("provider", "{}"), ("ms_p50", "{:.3f}"),
          ("peak_mb", "{:.1f}"), ("tflops", "{:.2f}"), ("us_per_step", "{:.1f}"), ("ratio_vs_cudnn", "{:.2f}"))


def format_table(rows: Sequence[dict]) -> str:
    head = [name for name, _ in _TABLE]
    body = [[("" if r[name] is None else fmt.format(r[name])) for name, fmt in _TABLE] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in body]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
DESCRIPTION = "Time fastrnn against cuDNN, ATen, a torch.nn cell loop (and FlashRNN) on the standard grid."
EPILOG = f"""\
benchmarks: {", ".join(GRID_NAMES)}
providers:  {", ".join(f"{p.name}{'' if p.default else ' (not default)'}" for p in PROVIDERS.values())}
            name:variant picks a variant: fastrnn:<backend> (auto, reference, triton, torch) or
            fastrnn:<strategy> (a Triton execution strategy, e.g. tiled, persistent); flashrnn:<its backend>
Every provider is checked against an fp64 torch.nn oracle before it is timed; one that fails is not timed
(reported as WRONG; one that raises: ERROR; either makes the exit status 1). Results: <out>/<date>-<device>.csv,
a .png plot beside it, and <stem>.skipped.txt listing what was skipped and why. Exit status 2: no CUDA device
(without --device cpu) or bad arguments. Column meanings and the FLOP convention: bench/README.md.
${COMMIT_ENV_VAR} sets the fastrnn_commit column where the tree has no .git (default: git rev-parse --short HEAD).
"""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` (the ``fastrnn bench`` subcommand or a standalone parser)."""
    if parser.description is None:
        parser.description = DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
        if parser.formatter_class is argparse.HelpFormatter:
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--grid", metavar="NAME[,NAME]", default=None,
                        help=f"benchmarks of the standard grid to run (default: all): {', '.join(GRID_NAMES)}")
    parser.add_argument("--providers", metavar="P[,P]", default=None,
                        help="providers to compare, 'all' for every registered one (default: "
                             + ",".join(n for n, p in PROVIDERS.items() if p.default)
                             + ", plus fastrnn:<strategy> for each Triton execution strategy on CUDA); "
                               "name:variant for a variant, e.g. fastrnn:reference, fastrnn:persistent")
    parser.add_argument("--compile", action="store_true",
                        help="add the compile provider (the cell loop under torch.compile) to the provider list")
    parser.add_argument("--modes", metavar="M[,M]", default=",".join(MODES),
                        help="fwd (inference, no_grad) and/or fwd+bwd (training step) (default: %(default)s)")
    parser.add_argument("--dtypes", metavar="D[,D]", default=None,
                        help=f"dtypes among {', '.join(DTYPES)}; filters each benchmark's own dtypes "
                             "(default: the grid's; fp32 for --shape)")
    parser.add_argument("--cells", metavar="C[,C]", default=None,
                        help=f"cells among {', '.join(GATES)}; filters the grid, or the cells of --shape "
                             "(default: the grid's; lstm for --shape)")
    parser.add_argument("--shape", metavar="B,T,H", default=None,
                        help="one custom shape (I = H, 1 layer) instead of the grid; the bench column reads 'custom'")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="directory for the CSV, PNG and skip list (default: bench/results under the "
                             "current directory; a --device cpu smoke run writes nothing unless --out is given)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cuda (default; required for real results) or cpu: a smoke run of the harness "
                             "with a perf_counter timer, needs --shape")
    parser.add_argument("--warmup", type=float, default=25, metavar="MS",
                        help="warm-up time per timing in ms (do_bench's warmup) (default: %(default)s)")
    parser.add_argument("--rep", type=float, default=100, metavar="MS",
                        help="timed repetition time per timing in ms (do_bench's rep) (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")


class _UsageError(Exception):
    pass


def _parse_choices(text: str | None, allowed: Iterable[str], what: str) -> list[str] | None:
    if text is None:
        return None
    items = _csv_list(text)
    allowed = list(allowed)
    bad = [i for i in items if i not in allowed]
    if bad or not items:
        raise _UsageError(f"--{what}: unknown {', '.join(map(repr, bad)) or 'empty list'}; "
                          f"choose from {', '.join(allowed)}")
    return items


def _plan(args, device: torch.device) -> tuple[list[tuple[Case, str]], list[str], list[str]]:
    modes = _parse_choices(args.modes, MODES, "modes")
    dtypes = _parse_choices(args.dtypes, DTYPES, "dtypes")
    cells = _parse_choices(args.cells, GATES, "cells")
    if args.providers is None:
        providers = default_providers(device)
    elif args.providers.strip() == "all":
        providers = default_providers(device) + [n for n, p in PROVIDERS.items() if not p.default]
    else:
        providers = _csv_list(args.providers)
        bad = [p for p in providers if p.partition(":")[0] not in PROVIDERS]
        if bad or not providers:
            raise _UsageError(f"--providers: unknown {', '.join(map(repr, bad)) or 'empty list'}; "
                              f"registered: {', '.join(PROVIDERS)}")
    if getattr(args, "compile", False) and "compile" not in providers:
        providers.append("compile")
    if args.shape is not None:
        if args.grid is not None:
            raise _UsageError("--shape and --grid are exclusive: --shape runs one custom shape instead of the grid")
        try:
            B, T, H = (int(v) for v in args.shape.split(","))
        except ValueError:
            raise _UsageError(f"--shape must be B,T,H (three positive integers), got {args.shape!r}") from None
        if min(B, T, H) <= 0:
            raise _UsageError(f"--shape must be B,T,H (three positive integers), got {args.shape!r}")
        cases = [(Case("custom", cell, B=B, T=T, H=H, I=H), dt)
                 for cell in (cells or ["lstm"]) for dt in (dtypes or ["fp32"])]
    else:
        try:
            cases = select_grid(None if args.grid is None else _csv_list(args.grid), cells, dtypes)
        except ValueError as e:
            raise _UsageError(f"--grid: {e}") from None
        if not cases:
            raise _UsageError("nothing to run: the --grid/--cells/--dtypes filters leave no benchmark")
    return cases, providers, modes


def main(args: argparse.Namespace) -> int:
    """Run ``fastrnn bench`` with parsed ``args`` (see :func:`add_arguments`). Returns the exit status:
    0 done, 1 a provider gave a wrong result or raised (not timed; files still written), 2 usage error or no
    CUDA."""

    def fail(msg: str) -> int:
        print(f"fastrnn bench: error: {msg}", file=sys.stderr)
        return 2

    if args.device is None or args.device == "cuda":
        if not torch.cuda.is_available():
            return fail("no CUDA device: the benchmarks time GPU kernels. For a smoke test of the harness on "
                        "the CPU use --device cpu --shape B,T,H (e.g. --shape 2,3,8).")
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
        if args.shape is None:
            return fail("--device cpu runs a smoke test of one tiny custom shape: give --shape B,T,H "
                        "(e.g. --shape 2,3,8); the standard grid is GPU-sized")
    try:
        cases, providers, modes = _plan(args, device)
    except _UsageError as e:
        return fail(str(e))
    if args.warmup < 0 or args.rep <= 0:
        return fail("--warmup must be >= 0 and --rep > 0 (milliseconds)")

    threads = torch.get_num_threads()
    if device.type == "cpu":
        print("CPU SMOKE RUN: perf_counter timings of the harness plumbing; these are not benchmark results.",
              file=sys.stderr)
        torch.set_num_threads(1)  # tiny shapes: thread spin-up dominates on a shared CPU
    try:
        rows, skips = run(cases, providers, modes, device, args.warmup, args.rep,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        torch.set_num_threads(threads)

    out = args.out
    if out is None and device.type == "cpu":
        print("(CPU smoke run: no files written; pass --out DIR to write them)", file=sys.stderr)
    elif rows or skips:
        out_dir = Path(out) if out is not None else Path.cwd() / "bench" / "results"
        env = rows[0] if rows else environment(device)
        path = result_path(out_dir, env["device"], env["date"])
        write_csv(rows, path)
        written = [path]
        if rows and not args.no_plot:
            plot(rows, path.with_suffix(".png"))
            written.append(path.with_suffix(".png"))
        if skips:
            skip_path = path.with_name(path.stem + ".skipped.txt")
            skip_path.write_text("".join(f"{s}\n" for s in skips))
            written.append(skip_path)
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    print(format_table(rows))
    bad = [s for s in skips if s.kind in ("wrong", "error")]
    if bad:
        print(f"{len(bad)} provider run(s) gave a WRONG result or an ERROR and were not timed:", file=sys.stderr)
        for s in bad:
            print(f"  {s}", file=sys.stderr)
        return 1
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m fastrnn.apps.bench``: the same as ``fastrnn bench``."""
    parser = argparse.ArgumentParser(prog="fastrnn bench")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
