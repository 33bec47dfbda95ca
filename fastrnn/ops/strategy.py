"""The one place that decides how a Triton recurrence is launched: which kernel, grid, tile sizes and options.

Strategies (both run the whole sequence in one launch per layer and direction; kernels/common.py):
    ``tiled``       ``<cell>_{fwd,bwd}_kernel``: one program per batch tile owns every hidden tile and streams
                    all of W_hh from global memory (L2) every step; only block barriers. Works everywhere,
                    any size (the interpreter included); parallelism is the number of batch tiles.
    ``persistent``  ``<cell>_{fwd,bwd}_persistent_kernel``: the programs of a batch group split the hidden
                    units (a program owns every gate of its units) and exchange h_t (backward: partials of
                    dh_{t-1}) through global memory, synchronised by one flag per program and phase. All
                    programs must be resident at once: the grid is capped at the multiprocessor count and
                    launched cooperatively, so an oversized grid fails at launch instead of hanging. Where every
                    program owns one unit tile and its slice of the recurrent weights fits
                    :data:`RESIDENT_BYTES`, the slice is loaded once and stays on chip (``_resident`` in the
                    launch-count name); elsewhere it is re-read every step (streaming).
    ``auto``        :func:`auto_choice`: persistent where the grid is resident (the compiled-code estimates of
                    ``bench/static_report.py`` put it ahead of tiled at every such shape of the standard grid:
                    tiled runs one SM per batch tile and re-reads all of W_hh every step), tiled where it is not
                    and under the plain interpreter.

The request comes from :func:`use_strategy` (a context manager, innermost wins), else the ``FASTRNN_STRATEGY``
environment variable, else ``auto``. ``persistent`` falls back to ``tiled`` with a warning where it cannot
run: under the plain interpreter with more than one program (programs run one after another there, so a
program waiting for another would spin forever; :func:`fastrnn.testing.concurrent_interpreter` runs them as
threads). ``FASTRNN_PERSISTENT_PROGRAMS`` caps the number of programs of a persistent grid.
``FASTRNN_RESIDENT_WEIGHTS=0`` turns the resident slices off (for comparing the two on a GPU).

Tile sizes (constexprs of every kernel): BU units per tile, so that a slice of every gate is NGS * BU = 64 rows
for LSTM and GRU (Hopper's wgmma M; GRU pads its 3 gates to 4 slots; slices too large for shared memory drop
to BU = 8, twice the programs), 16 for RNN; BN batch columns (the N of every matmul, up to
:data:`MAX_BLOCK_N`); the reduction in NKC <= 4 chunks of KC (chunking: K = 768 is 3 x 256, not padded to 1024).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import triton

from fastrnn import testing
from fastrnn.ops import _launch as L
from fastrnn.reference import GATES

STRATEGIES = ("auto", "persistent", "tiled")
ENV_VAR = "FASTRNN_STRATEGY"
PROGRAMS_ENV_VAR = "FASTRNN_PERSISTENT_PROGRAMS"
RESIDENT_ENV_VAR = "FASTRNN_RESIDENT_WEIGHTS"

#: Hidden units per tile: LSTM and GRU slices are then 4 gate slots x 16 = 64 rows, Hopper's wgmma M per
#: warpgroup; an RNN slice is 16 rows (mma.sync), which gives it as many programs as the gated cells.
BLOCK_U = 16
#: Projection units per tile (LSTM proj_size; the W_hr slice is the M side, so mma.sync, M = 16).
BLOCK_Q = 16
#: Largest batch tile (the N of a matmul): [KC, BN] state chunks are staged in shared memory beside the slice.
MAX_BLOCK_N = 64
#: Reduction chunk of a streamed slice (a step loops over K in chunks of this).
STREAM_CHUNK = 64
#: Most chunks a resident slice is split into (each one a separate shared-memory operand).
MAX_CHUNKS = 4
#: Bytes of resident weight slices one persistent program may keep in shared memory (Hopper: 227 KB per block;
#: the rest stages the state chunks [KC, BN] of each dot and the layout conversions of the gate split).
RESIDENT_BYTES = 160 * 1024
#: Elements of one partial-sum load of the backward ([NPC, BQ, BN]).
GATHER_ELEMENTS = 4096
#: Software-pipelining stages: resident slices have nothing to prefetch in a step's chunk sequence (one dot per
#: chunk, no loop), streamed ones overlap the next chunk's load with the current dot.
NUM_STAGES = {True: 1, False: 2}
#: Batch tiles up to this many columns run a forward step on one warpgroup (4 warps: a slice dot is one wgmma
#: of M = 64); wider ones, and every backward (its partials are [KC, BN] dots of up to 256 rows), on two, whose
#: registers the tiles would otherwise spill.
ONE_WARPGROUP_N = 32

#: Stack of use_strategy() requests, innermost last (a plain list: torch.compile traces reads of it, not of a
#: ContextVar).
_override: list[str] = []


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


@contextlib.contextmanager
def use_strategy(strategy: str) -> Iterator[None]:
    """Run the recurrences inside the block with ``strategy`` (``auto``, ``persistent`` or ``tiled``)."""
    _override.append(check_strategy(strategy))
    try:
        yield
    finally:
        _override.pop()


def requested() -> str:
    """The strategy asked for: the innermost :func:`use_strategy`, else $FASTRNN_STRATEGY, else ``auto``."""
    if _override:
        return _override[-1]
    name = os.environ.get(ENV_VAR, "") or "auto"
    if name not in STRATEGIES:
        raise ValueError(f"{ENV_VAR} must be one of {STRATEGIES}, got {name!r}")
    return name


def _program_cap() -> int | None:
    value = os.environ.get(PROGRAMS_ENV_VAR, "")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{PROGRAMS_ENV_VAR} must be a positive integer, got {value!r}")
    return int(value)


def _resident_allowed() -> bool:
    value = os.environ.get(RESIDENT_ENV_VAR, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{RESIDENT_ENV_VAR} must be 0 or 1, got {value!r}")
    return value != "0"


def max_programs(device: torch.device) -> int:
    """Programs that are surely resident at once: one per multiprocessor (the kernels use most of its shared
    memory), capped by $FASTRNN_PERSISTENT_PROGRAMS; under the interpreter one, or the cap inside
    :func:`fastrnn.testing.concurrent_interpreter` (programs run as threads there)."""
    cap = _program_cap()
    if L.interpreting() or device.type != "cuda":
        return (cap or testing.DEFAULT_PROGRAMS) if testing.concurrent() else 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return min(sms, cap) if cap else sms


def chunking(K: int) -> tuple[int, int]:
    """(KC, NKC) of a resident slice with reduction K: at most MAX_CHUNKS chunks of a power of two >= 16."""
    kc = max(16, triton.next_power_of_2(triton.cdiv(max(K, 1), MAX_CHUNKS)))
    return kc, triton.cdiv(max(K, 1), kc)


def gate_slots(mode: str) -> int:
    """NGS: the gates of a slice padded to a power of two."""
    return triton.next_power_of_2(GATES[mode])


@dataclasses.dataclass(frozen=True)
class Grid:
    """Shape of a launch: ``n_h`` hidden slices (1 when tiled) times ``groups`` batch groups, tiles of ``block_u``
    units and ``block_n`` batch columns, the weight slice ``resident`` or streamed."""

    strategy: str
    n_h: int
    groups: int
    block_u: int
    block_n: int
    resident: bool

    @property
    def programs(self) -> int:
        return self.n_h * self.groups

    def unit_tiles(self, H: int) -> int:
        return triton.cdiv(H, self.block_u)


def _block_n(B: int) -> int:
    return max(16, min(MAX_BLOCK_N, triton.next_power_of_2(max(B, 1))))


def resident_bytes(mode: str, H: int, P: int, block_u: int, itemsize: int) -> int:
    """Shared memory of one program's resident slices: its W_hh slice (NGS * BU rows of the chunked reduction
    over P; the backward holds the same slice transposed) and with proj_size the larger of its W_hr slices
    (forward: BLOCK_Q rows over H; backward: BU columns over P)."""
    rows = gate_slots(mode) * block_u
    kc, nkc = chunking(P)
    total = rows * kc * nkc
    if P != H:
        kch, nkch = chunking(H)
        kcp, nkcp = chunking(P)
        total += max(BLOCK_Q * kch * nkch, block_u * kcp * nkcp)
    return total * itemsize


def persistent_grid(mode: str, B: int, H: int, P: int, mm_dtype: torch.dtype, device: torch.device) -> Grid:
    """The persistent launch for these sizes: hidden split first (it shortens every program's chain of dots, the
    latency that bounds a step), n_h = min(unit tiles, programs); leftover programs split the batch into groups
    (the smallest batch tile that spreads B over them, at least 16 columns). Resident
    where every program owns one unit tile and one projection tile and the slices fit :data:`RESIDENT_BYTES`
    (LSTM/GRU try BU = 16, then 8)."""
    limit = max_programs(device)
    itemsize = torch.empty((), dtype=mm_dtype, device="meta").element_size()
    block_u = BLOCK_U
    resident = False
    for bu in (BLOCK_U, BLOCK_U // 2) if gate_slots(mode) > 1 else (BLOCK_U,):  # tl.dot needs M >= 16
        tiles = max(triton.cdiv(H, bu), triton.cdiv(P, BLOCK_Q) if P != H else 0)
        fits = resident_bytes(mode, H, P, bu, itemsize) <= RESIDENT_BYTES
        if tiles <= limit and fits and _resident_allowed():
            block_u, resident = bu, True
            break
    n_h = min(triton.cdiv(H, block_u), limit)
    max_groups = max(1, limit // n_h)
    block_n = _block_n(triton.cdiv(B, max_groups))  # the batch over as many groups as fit: shorter steps
    groups = min(triton.cdiv(B, block_n), max_groups)
    return Grid("persistent", n_h, groups, block_u, block_n, resident)


def tiled_grid(mode: str, B: int) -> Grid:
    """One program per batch tile, every unit tile, the weights streamed."""
    block_n = _block_n(B) if not L.interpreting() else max(16, min(64, triton.next_power_of_2(max(B, 1))))
    return Grid("tiled", 1, triton.cdiv(max(B, 1), block_n), BLOCK_U, block_n, False)


def auto_choice(mode: str, B: int, H: int, P: int, mm_dtype: torch.dtype, device: torch.device) -> str:
    """``auto``'s pick: persistent where its grid is resident (see the module docstring), else tiled."""
    if L.interpreting() and not testing.concurrent():
        return "tiled"
    return "persistent" if persistent_grid(mode, B, H, P, mm_dtype, device).resident else "tiled"


def select(
    mode: str, B: int, H: int, P: int, mm_dtype: torch.dtype, device: torch.device, name: str | None = None
) -> str:
    """The strategy a recurrence of these sizes runs with, ``"tiled"`` or ``"persistent"``, for the request
    ``name`` (default: :func:`requested`)."""
    name = requested() if name is None else check_strategy(name)
    if name == "auto":
        return auto_choice(mode, B, H, P, mm_dtype, device)
    if name == "persistent" and L.interpreting() and not testing.concurrent():
        programs = persistent_grid(mode, B, H, P, mm_dtype, device).programs
        if programs > 1:  # pragma: no cover - max_programs is 1 here unless a test patches it
            warnings.warn(
                f"fastrnn: the persistent {mode} kernel needs all {programs} programs resident at once, which the "
                "plain Triton interpreter cannot do (it runs programs one after another); using the tiled kernel",
                RuntimeWarning,
                stacklevel=3,
            )
            return "tiled"
    return name


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a launcher needs besides its buffers: the kernel, its grid, the tiling constexprs, the launch
    options and the launch-count name."""

    kernel: Any
    grid: Grid
    constexprs: dict[str, int | bool]
    options: dict[str, Any]
    name: str

    def flags(self, device: torch.device) -> torch.Tensor:
        """The zeroed int32 phase flags of a launch, [groups, n_h]."""
        return torch.zeros((self.grid.groups, self.grid.n_h), dtype=torch.int32, device=device)

    def launch(self, *args: Any, **cell_constexprs: Any) -> None:
        """Launch with the cell's arguments (pointers and sizes up to N_H) and its own constexprs."""
        L.count(self.name)
        names = self.kernel.arg_names
        consts = {k: v for k, v in self.constexprs.items() if k in names}
        self.kernel[(self.grid.programs,)](*args, self.grid.n_h, **cell_constexprs, **consts, **self.options)


def precision(mm_dtype: torch.dtype) -> int:
    """The kernels' PREC (kernels/common.py): tensor cores in the matmul dtype for fp16/bf16 (fp32 operands under
    the interpreter, whose bf16 dot is broken); for fp32 TF32 when ``torch.backends.cudnn.allow_tf32`` is set
    (torch's switch for cuDNN RNNs, on by default), else exact fp32 products."""
    if mm_dtype in (torch.float16, torch.bfloat16):
        return 2 if L.interpreting() and mm_dtype == torch.bfloat16 else 0
    return 1 if torch.backends.cudnn.allow_tf32 else 2


def plan(
    module,
    mode: str,
    backward: bool,
    B: int,
    H: int,
    P: int,
    mm_dtype: torch.dtype,
    device: torch.device,
    request: str = "auto",
) -> Plan:
    """The launch of ``mode``'s forward (or backward) kernel from kernels module ``module`` for these sizes,
    under strategy ``request``."""
    strategy = select(mode, B, H, P, mm_dtype, device, request)
    grid = persistent_grid(mode, B, H, P, mm_dtype, device) if strategy == "persistent" else tiled_grid(mode, B)
    persistent = strategy == "persistent"
    cell = "rnn" if mode.startswith("rnn") else mode
    pass_ = "bwd" if backward else "fwd"
    kernel = getattr(module, f"{cell}_{pass_}{'_persistent' if persistent else ''}_kernel")
    if grid.resident:
        kc, nkc = chunking(P)
        kch, nkch = chunking(P if backward else H)
    else:
        kc = kch = max(16, min(STREAM_CHUNK, triton.next_power_of_2(max(H, P))))
        nkc = nkch = 1
    n_tiles = triton.cdiv(H, grid.block_u)
    block_q = BLOCK_Q if P != H else grid.block_u
    npc = max(1, min(triton.next_power_of_2(n_tiles), GATHER_ELEMENTS // (block_q * grid.block_n)))
    constexprs = {
        "RESIDENT": grid.resident, "BU": grid.block_u, "BQ": block_q, "BN": grid.block_n, "KC": kc, "NKC": nkc,
        "KCH": kch, "NKCH": nkch, "NF": triton.next_power_of_2(grid.n_h), "NPC": npc, "PREC": precision(mm_dtype),
    }  # fmt: skip
    warps = 8 if backward or grid.block_n > ONE_WARPGROUP_N else 4
    options: dict[str, Any] = {"num_stages": NUM_STAGES[grid.resident], "num_warps": warps}
    if persistent and device.type == "cuda":
        options["launch_cooperative_grid"] = True
    name = f"{cell}_{pass_}" + ("_persistent" if persistent else "") + ("_resident" if grid.resident else "")
    return Plan(kernel, grid, constexprs, options, name)
