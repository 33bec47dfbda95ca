"""The provider registry: what is timed against what.

A provider is a ``build(problem, variant) -> Runner`` function registered under a name; the spec
``name:variant`` passes ``variant`` (``fastrnn:reference``, ``fastrnn:persistent``). A build raises
:class:`Unsupported` for a case, dtype or device it cannot run: the row is written with status ``skipped``.

    fastrnn             fastrnn.from_torch(module): the default backend (Triton on CUDA) and strategy
    fastrnn:<backend>   auto, reference, triton, torch
    fastrnn:<strategy>  backend triton inside fastrnn.ops.use_strategy(<strategy>): tiled, persistent (CUDA)
    cudnn               the torch.nn module on CUDA, cuDNN enabled
    aten                the same under torch.backends.cudnn.flags(enabled=False)
    loop                a Python loop over torch.nn.LSTMCell/GRUCell/RNNCell, what the tutorials write
    compile             that loop with each cell under torch.compile (not in the default list)
    flashrnn            FlashRNN where installed (dense: one head), lstm/gru/rnn_tanh, fp16/bf16
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench.problem import Problem, split_output
from fastrnn.reference import GATES

#: the providers of a first GPU contact (cudnn and fastrnn's execution strategies), see bench.grid.session_plan
FIRST_CONTACT_PROVIDERS = ("cudnn", "fastrnn:tiled", "fastrnn:persistent")


class Unsupported(Exception):
    """Raised by a provider's ``build`` for a case, dtype or device it cannot run (the row says skipped)."""


@dataclasses.dataclass
class Runner:
    """A provider's model built for one :class:`~bench.problem.Problem`.

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
    """A registered provider. ``default``: part of the default provider list."""

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


def check_spec(spec: str) -> str:
    """``spec`` if its name is registered, else ValueError naming the registered ones."""
    if spec.partition(":")[0] not in PROVIDERS:
        raise ValueError(f"unknown provider {spec!r}; registered: {', '.join(PROVIDERS)}")
    return spec


def build_runner(spec: str, problem: Problem) -> Runner:
    """The runner of the provider ``spec`` (``name`` or ``name:variant``) for ``problem``."""
    name, _, variant = check_spec(spec).partition(":")
    return PROVIDERS[name].build(problem, variant or None)


def fastrnn_strategies() -> tuple[str, ...]:
    """fastrnn's Triton execution strategies other than ``auto`` (empty when fastrnn.ops cannot be imported)."""
    try:
        from fastrnn.ops.strategy import STRATEGIES
    except Exception:  # noqa: BLE001 - no triton / a broken ops package: no strategy providers, not a crash
        return ()
    return tuple(s for s in STRATEGIES if s != "auto")


def default_providers(device: torch.device | str = "cuda") -> list[str]:
    """The default list, most important first: cudnn, then on CUDA ``fastrnn:<strategy>`` for each Triton
    execution strategy, then the other registered defaults (``fastrnn`` itself, aten, loop, flashrnn)."""
    names = [n for n, p in PROVIDERS.items() if p.default]
    strategies = fastrnn_strategies() if torch.device(device).type == "cuda" else ()
    head = ["cudnn"] if "cudnn" in names else []
    head += [f"fastrnn:{s}" for s in ("tiled", "persistent") if s in strategies]
    head += [f"fastrnn:{s}" for s in strategies if f"fastrnn:{s}" not in head]
    return head + [n for n in names if n not in head]


def _module_runner(model: nn.Module, problem: Problem, context=contextlib.nullcontext) -> Runner:
    def forward():
        return split_output(*model(problem.input, problem.hx), problem.lstm)

    return Runner(forward, dict(model.named_parameters()), context)


def _need_cuda(problem: Problem, what: str) -> None:
    if problem.device.type != "cuda":
        raise Unsupported(f"{what} needs a CUDA device")


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
    from fastrnn.ops import use_strategy

    model = fastrnn.from_torch(problem.module, backend="triton")
    return _module_runner(model, problem, lambda: use_strategy(variant))


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
    """The tutorial loop: one torch.nn cell per layer and direction, called once per time step, the module's
    weights copied. Unpacked input only (a cell loop over a PackedSequence is not what tutorials write)."""
    case, m = problem.case, problem.module
    if problem.lengths is not None:
        raise Unsupported("the cell loop runs unpacked sequences only")
    cell_cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}.get(case.cell, nn.RNNCell)
    extra = {} if case.cell in ("lstm", "gru") else {"nonlinearity": case.cell.removeprefix("rnn_")}
    steps, params = [], {}
    for layer in range(case.layers):
        for direction in range(case.directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            i_l = case.I if layer == 0 else case.H * case.directions
            cell = cell_cls(i_l, case.H, device=problem.device, dtype=problem.dtype, **extra)
            with torch.no_grad():
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, kind).copy_(getattr(m, kind + suffix))
                    params[kind + suffix] = getattr(cell, kind)
            steps.append(torch.compile(cell, dynamic=False) if compiled else cell)

    def forward():
        x, h_n, c_n = problem.input, [], []
        for layer in range(case.layers):
            outs = []
            for direction in range(case.directions):
                k = layer * case.directions + direction
                state = (problem.h0[k], problem.c0[k]) if problem.lstm else problem.h0[k]
                ys = [x] * case.T
                for t in range(case.T - 1, -1, -1) if direction else range(case.T):
                    state = steps[k](x[t], state)
                    ys[t] = state[0] if problem.lstm else state
                outs.append(torch.stack(ys))
                h_n.append(state[0] if problem.lstm else state)
                c_n.append(state[1] if problem.lstm else None)
            x = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return x, ((torch.stack(h_n), torch.stack(c_n)) if problem.lstm else (torch.stack(h_n),))

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
    params = {name: p.detach().clone().requires_grad_() for name, p in problem.module.named_parameters()}
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
