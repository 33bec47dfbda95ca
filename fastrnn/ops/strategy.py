"""The one place that decides how a Triton recurrence is launched: the tiled or the persistent kernels.

Strategies:
    ``tiled``       ``<cell>_fwd_kernel`` / ``<cell>_bwd_kernel``: one program per 16-row batch tile runs all T
                    steps and reads all of W_hh from global memory (L2) every step; only block barriers. Works
                    everywhere (interpreter included); parallelism is cdiv(B, 16) programs, so small batches
                    leave most of the GPU idle.
    ``persistent``  ``<cell>_{fwd,bwd}_persistent_kernel``: the programs split the hidden units (a program owns
                    every gate of its units, so the LSTM cell state never leaves it) and, where programs are
                    left over, the batch tiles; they exchange h_t (backward: dG_t) through global memory and
                    meet at one grid-wide barrier per step (two for LSTM with proj_size). Each program reads
                    only its own W_hh slice per step. Needs all programs resident at once: the grid is capped
                    at the multiprocessor count and launched cooperatively (``launch_cooperative_grid``), so an
                    oversized grid fails at launch instead of hanging.
    ``auto``        ``tiled`` for now. The persistent kernels have only been checked in the interpreter (grid
                    of one program) and compiled for sm_90; they become the ``auto`` choice for the shapes
                    where a GPU run shows them faster (expected: small B, large H, long T).

The request comes from :func:`use_strategy` (a context manager, innermost wins), else the ``FASTRNN_STRATEGY``
environment variable, else ``auto``. ``persistent`` falls back to ``tiled`` with a warning where it cannot
run: under the interpreter with more than one program (programs run one after another there, so a grid
barrier would spin forever). ``FASTRNN_PERSISTENT_PROGRAMS`` caps the number of programs of a hidden-unit
split (for sweeping grid sizes on a GPU).

Resident weights (persistent only): where every program owns at most one hidden tile and one projection tile
and its slice of the recurrent weights fits :data:`RESIDENT_BUDGET` (:func:`resident_fits`), the persistent
kernels run their ``RESIDENT`` variant: the slice is loaded once, before the time loop, and stays on chip
(Triton keeps the loop-invariant block in shared memory and feeds the per-step dots from there) instead of
being re-read from L2 every step. Elsewhere they stream the slice as before; both give the same results.
``FASTRNN_RESIDENT_WEIGHTS=0`` turns the resident variant off (for comparing the two on a GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator

import torch
import triton

from fastrnn.ops import _launch as L

STRATEGIES = ("auto", "persistent", "tiled")
ENV_VAR = "FASTRNN_STRATEGY"
PROGRAMS_ENV_VAR = "FASTRNN_PERSISTENT_PROGRAMS"
#: Hidden units per tile of the persistent kernels on a GPU (tl.dot needs N >= 16); a program owns tiles
#: slice, slice + n_h, ... so any H fits any number of programs.
PERSISTENT_BLOCK_H = 16

#: Bytes of resident weight slices one persistent program may keep on chip, per matmul dtype, with the
#: reduction dimension padded to a power of two (see resident_bytes). fp16/bf16 (tensor-core dots read the
#: slice from shared memory): Hopper has 227 KB of shared memory per block and the compiled kernels also stage
#: the state rows of each dot there (16 x BKP fp32), so the slice gets a bit over half. fp32 ("ieee" FMA
#: dots hold their operands in registers): sm_90 compiles spill heavily above 32 KB (LSTM/GRU at H = 256).
#: Compiled resources per shape: ``python tests/cuda_compile_check.py --resources``.
RESIDENT_BUDGET = {torch.float16: 128 * 1024, torch.bfloat16: 128 * 1024, torch.float32: 32 * 1024}
RESIDENT_ENV_VAR = "FASTRNN_RESIDENT_WEIGHTS"
#: Software-pipelining stages of a resident launch: 1, none. A program's hidden-tile loop runs once there, so
#: there is nothing to overlap, and Triton's default (3) double-buffers the state rows of every dot in shared
#: memory next to the resident slice.
RESIDENT_NUM_STAGES = 1
#: Gate blocks of W_hh per cell (mode)
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

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


@dataclasses.dataclass(frozen=True)
class PersistentGrid:
    """Launch shape of a persistent kernel: ``n_h`` hidden slices times ``groups`` batch groups, tiles of
    ``block_h`` hidden (and projection) units."""

    n_h: int
    groups: int
    block_h: int

    @property
    def programs(self) -> int:
        return self.n_h * self.groups


def max_programs(device: torch.device) -> int:
    """Programs that are surely resident at once: one per multiprocessor (the kernels hold many registers);
    the interpreter runs one program at a time, so one there."""
    if L.interpreting() or device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _program_cap() -> int | None:
    value = os.environ.get(PROGRAMS_ENV_VAR, "")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{PROGRAMS_ENV_VAR} must be a positive integer, got {value!r}")
    return int(value)


def persistent_grid(B: int, H: int, P: int, device: torch.device) -> PersistentGrid:
    """The persistent launch for batch B, hidden H and state size P (proj_size or H) on ``device``.

    Hidden split first (it shortens every program's serial chain of dots, the latency that bounds a step):
    n_h = min(#16-unit tiles, programs); leftover programs take batch groups. Under the interpreter: one
    program with the tiled kernels' tile size. :data:`PROGRAMS_ENV_VAR` lowers the cap (``n_h`` included).
    """
    units = max(H, P)
    limit = max_programs(device)
    cap = _program_cap()
    if L.interpreting() or device.type != "cuda":
        n_h = cap or 1
        return PersistentGrid(n_h, 1, L.block(triton.cdiv(units, n_h)))
    if cap is not None:
        limit = min(limit, cap)
    n_h = min(triton.cdiv(units, PERSISTENT_BLOCK_H), limit)
    groups = max(1, min(triton.cdiv(B, L.BLOCK_B), limit // n_h))
    return PersistentGrid(n_h, groups, PERSISTENT_BLOCK_H)


def select(mode: str, B: int, H: int, P: int, device: torch.device) -> str:
    """The strategy a recurrence of these sizes runs with: ``"tiled"`` or ``"persistent"`` (see module doc)."""
    name = requested()
    if name == "auto":
        return "tiled"
    if name == "persistent" and L.interpreting():
        programs = persistent_grid(B, H, P, device).programs
        if programs > 1:
            warnings.warn(
                f"fastrnn: the persistent {mode} kernel needs all {programs} programs resident at once, which the "
                "Triton interpreter cannot do (it runs programs one after another); using the tiled kernel",
                RuntimeWarning,
                stacklevel=3,
            )
            return "tiled"
    return name


def _pad(n: int) -> int:
    """A reduction dimension n as a resident block's (constexpr) size: a power of two, at least 16."""
    return max(16, triton.next_power_of_2(n))


def resident_bytes(mode: str, H: int, P: int, block_h: int, itemsize: int) -> int:
    """Bytes of the resident weight slices of one persistent program (the larger of forward and backward).

    Forward: the program's hidden tile of every gate's rows of W_hh, gates x [pad(P), block_h] (with
    proj_size also its projection tile's rows of W_hr, [pad(H), block_h]). Backward: dh_{t-1} = dG_t W_hh
    needs the W_hh columns of its projection tile for every gate, gates x [pad(H), block_h] (with proj_size
    also the W_hr columns of its hidden tile, [pad(P), block_h]). pad: next power of two, at least 16.
    """
    gates = _GATES[mode]
    fwd = gates * _pad(P) * block_h + (_pad(H) * block_h if P != H else 0)
    bwd = gates * _pad(H) * block_h + (_pad(P) * block_h if P != H else 0)
    return max(fwd, bwd) * itemsize


def resident_fits(mode: str, grid: PersistentGrid, H: int, P: int, mm_dtype: torch.dtype) -> bool:
    """The fit rule of the resident variant: every program owns at most one hidden and one projection tile
    (cdiv(max(H, P), block_h) <= n_h) and :func:`resident_bytes` <= :data:`RESIDENT_BUDGET` [mm_dtype]; and
    ``$FASTRNN_RESIDENT_WEIGHTS`` is not ``0``."""
    value = os.environ.get(RESIDENT_ENV_VAR, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{RESIDENT_ENV_VAR} must be 0 or 1, got {value!r}")
    if value == "0" or triton.cdiv(max(H, P), grid.block_h) > grid.n_h:
        return False
    itemsize = torch.empty((), dtype=mm_dtype, device="meta").element_size()
    return resident_bytes(mode, H, P, grid.block_h, itemsize) <= RESIDENT_BUDGET[mm_dtype]


def resident_args(mode: str, grid: PersistentGrid, H: int, P: int, mm_dtype: torch.dtype) -> dict[str, int | bool]:
    """The RESIDENT, BHP (and for LSTM BP) constexprs of a persistent launch: the padded reduction blocks
    where the slice is resident (compiled per H and P, never per T), else 16 (unused); a resident launch also
    gets ``num_stages`` = :data:`RESIDENT_NUM_STAGES`."""
    on = resident_fits(mode, grid, H, P, mm_dtype)
    args: dict[str, int | bool] = {"RESIDENT": on, "BHP": _pad(H) if on else 16}
    if mode == "lstm":
        args["BP"] = _pad(P) if on else 16
    if on:
        args["num_stages"] = RESIDENT_NUM_STAGES
    return args


def kernel_name(base: str, args: dict[str, int | bool]) -> str:
    """The launch-count name of a persistent kernel: ``base``, with ``_resident`` for the resident variant."""
    return f"{base}_resident" if args["RESIDENT"] else base


def barrier_counters(grid: PersistentGrid, device: torch.device) -> torch.Tensor:
    """The zeroed int32 grid-barrier counters of a persistent launch, one per batch group."""
    return torch.zeros((grid.groups,), dtype=torch.int32, device=device)


def launch_options(device: torch.device) -> dict[str, bool]:
    """Launch keywords of a persistent kernel: a cooperative launch on a GPU (the driver then rejects a grid
    whose programs cannot all be resident, instead of the barrier spinning forever)."""
    return {"launch_cooperative_grid": True} if device.type == "cuda" else {}
