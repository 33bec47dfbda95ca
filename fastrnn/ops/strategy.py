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


def barrier_counters(grid: PersistentGrid, device: torch.device) -> torch.Tensor:
    """The zeroed int32 grid-barrier counters of a persistent launch, one per batch group."""
    return torch.zeros((grid.groups,), dtype=torch.int32, device=device)


def launch_options(device: torch.device) -> dict[str, bool]:
    """Launch keywords of a persistent kernel: a cooperative launch on a GPU (the driver then rejects a grid
    whose programs cannot all be resident, instead of the barrier spinning forever)."""
    return {"launch_cooperative_grid": True} if device.type == "cuda" else {}
