"""The standard grid as data, the first-contact subset, run plans and the FLOP convention.

Nothing here runs anything: a plan is a list of :class:`Job` (one (case, dtype) and the providers to run on
it, in order), made by :func:`grid_plan` or :func:`session_plan`; :mod:`bench.run` executes it.

FLOP convention (per layer and direction; N = B*T, or the number of valid tokens for packed input):
    forward   2*N*H*G (recurrence, G = gates*H: 4H LSTM, 3H GRU, H RNN) + 2*N*I_l*G (input projection,
              I_l = I for layer 0, directions*H above it); pointwise gate math is not counted
    fwd+bwd   3x the forward (the backward computes the gradients of both operands of each GEMM: ~2x)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from fastrnn.reference import GATES

DTYPES = ("fp32", "fp16", "bf16")
MODES = ("fwd", "fwd+bwd")
CELLS = tuple(GATES)


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape. Input [T, B, I] (time-major, as torch.nn's default), hidden H.

    Args:
        bench: the benchmark's name in the grid (the CSV's ``bench`` column); ``--grid`` selects by it.
        cell: ``lstm | gru | rnn_tanh | rnn_relu``.
        B, T, H, I: batch, time steps (the longest sequence when packed), hidden, input size.
        layers, bidir: stacking.
        dtypes: the dtypes this case is run in (of :data:`DTYPES`).
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


#: the standard grid of the protocol (LSTM unless said; 1 layer, unidirectional, I = H), in its table's order
GRID: tuple[Case, ...] = _standard_grid()
GRID_NAMES: tuple[str, ...] = tuple(dict.fromkeys(c.bench for c in GRID))
_GRID_ALIASES = {"deep-bidir": "deep/bidir", "deep": "deep/bidir", "bidir": "deep/bidir"}

#: the first rows a first GPU contact must return, in this order: (bench, B, H, dtype) of the grid
FIRST_CONTACT: tuple[tuple[str, int, int, str], ...] = (
    ("flashrnn-shape", 16, 768, "fp16"),   # the headline shape; cuDNN runs its persistent kernel in fp16 here
    ("flashrnn-shape", 16, 768, "bf16"),
    ("small-batch", 1, 1024, "bf16"),      # latency-bound: one sequence, the widest hidden size
    ("fastrnns-default", 64, 512, "fp32"),  # PyTorch's own benchmarks/fastrnns default
    ("large-batch", 256, 1024, "bf16"),    # throughput-bound
)
#: after the first contact, the rest of the grid in this order of benchmarks (every cell before more shapes)
REST_ORDER: tuple[str, ...] = ("gru", "rnn_tanh", "small-batch", "packed", "deep/bidir", "fastrnns-default",
                               "flashrnn-shape", "large-batch")


@dataclasses.dataclass(frozen=True)
class Job:
    """One (case, dtype) of a plan and the providers to run on it, in order (cudnn is moved first when run)."""

    case: Case
    dtype: str
    providers: tuple[str, ...]


def canonical_name(name: str) -> str:
    """The grid's name for ``name`` (accepts ``deep-bidir`` etc.). Raises ValueError for an unknown one."""
    name = _GRID_ALIASES.get(name, name)
    if name not in GRID_NAMES:
        raise ValueError(f"unknown benchmark {name!r}; the grid has: {', '.join(GRID_NAMES)}")
    return name


def select_grid(names: Iterable[str] | None = None, cells: Iterable[str] | None = None,
                dtypes: Iterable[str] | None = None) -> list[tuple[Case, str]]:
    """The (case, dtype) pairs of the named benchmarks (all when None), filtered by cell and dtype.

    Raises:
        ValueError: an unknown benchmark name.
    """
    wanted = None if names is None else [canonical_name(n) for n in names]
    cells = None if cells is None else set(cells)
    dtypes = None if dtypes is None else set(dtypes)
    out = []
    for case in GRID:
        if (wanted is None or case.bench in wanted) and (cells is None or case.cell in cells):
            out += [(case, dt) for dt in case.dtypes if dtypes is None or dt in dtypes]
    return out


def first_contact() -> list[tuple[Case, str]]:
    """The (case, dtype) pairs of :data:`FIRST_CONTACT`, in its order."""
    pairs = []
    for bench, B, H, dtype in FIRST_CONTACT:
        case = next(c for c in GRID if (c.bench, c.B, c.H) == (bench, B, H) and dtype in c.dtypes)
        pairs.append((case, dtype))
    return pairs


def grid_plan(pairs: Sequence[tuple[Case, str]], providers: Sequence[str]) -> list[Job]:
    """Every provider on every pair, pair by pair."""
    return [Job(case, dtype, tuple(providers)) for case, dtype in pairs]


def session_plan(first: Sequence[str], providers: Sequence[str]) -> list[Job]:
    """The order of a time-limited GPU session, most important rows first:

    1. the :data:`FIRST_CONTACT` pairs with the ``first`` providers (cudnn and fastrnn's strategies);
    2. the rest of the grid with the same providers, benchmarks in :data:`REST_ORDER`;
    3. every pair again with the remaining ``providers`` (those not in ``first``).
    """
    head = first_contact()
    rest = [p for p in select_grid() if p not in head]
    rest.sort(key=lambda p: REST_ORDER.index(p[0].bench) if p[0].bench in REST_ORDER else len(REST_ORDER))
    others = tuple(p for p in providers if p not in first)
    jobs = grid_plan(head + rest, first)
    if others:
        jobs += grid_plan(head + rest, others)
    return jobs


def flops(case: Case, mode: str, tokens: int | None = None) -> float:
    """FLOPs of one call in ``mode`` (see the module docstring for the convention)."""
    n = tokens if tokens is not None else case.B * case.T
    g = GATES[case.cell] * case.H
    total = 0
    for layer in range(case.layers):
        i_l = case.I if layer == 0 else case.H * case.directions
        total += case.directions * 2 * n * g * (case.H + i_l)
    return float(total * (3 if mode == "fwd+bwd" else 1))
