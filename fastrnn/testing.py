"""Testing aids: Triton's interpreter with a launch's programs running side by side.

Triton's interpreter (``TRITON_INTERPRET=1``) runs the programs of a launch one after another, so a program
that waits for another one (the persistent kernels' flags, a grid barrier) spins forever. Inside
:func:`concurrent_interpreter` every launch runs each of its programs in a thread of its own, with a per-thread
program id, and ``fastrnn.ops`` plans persistent grids of up to ``$FASTRNN_PERSISTENT_PROGRAMS`` (default
:data:`DEFAULT_PROGRAMS`) programs.

The programs take turns on a deterministic schedule, *run until blocked*: one program runs at a time, from
program 0, and it hands the interpreter to the next live program (in program order) only when it spins, that
is when it repeats an atomic operation (same operation, addresses, operands) and gets the same result as the
last time (a spin-wait on a flag nobody has raised since). So every program runs as far ahead as its waits
let it: a program that skips a wait reads a state its producer has not written yet, on every run, whatever
the machine's load (a timing-based interleaving can hide it). When every live program spins with nobody
making progress, the launch raises :class:`Deadlock` at once; ``timeout`` bounds a launch whose programs spin
without atomics.

Usage::

    with fastrnn.testing.concurrent_interpreter():
        out = module(x)   # persistent kernels with several programs, in threads
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import threading
import time
from collections.abc import Iterator

#: Programs of a persistent grid inside concurrent_interpreter() when $FASTRNN_PERSISTENT_PROGRAMS is unset.
DEFAULT_PROGRAMS = 4
#: Seconds between the checks of a program thread that waits for its turn (it must run Python now and then for
#: an interrupt to reach it).
POLL_INTERVAL = 0.05

_depth = 0  # concurrent_interpreter() blocks active (nested ones share the outermost block's hooks)
_program = threading.local()  # in a program's thread: .schedule and .rank


class Deadlock(RuntimeError):
    """Every live program of a launch spins on an atomic whose result nobody changes."""


def concurrent() -> bool:
    """Whether a :func:`concurrent_interpreter` block is active."""
    return _depth > 0


class _ThreadGridIdx:
    """A data descriptor that gives every thread its own ``InterpreterBuilder.grid_idx``."""

    def __init__(self) -> None:
        self.local = threading.local()

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(self.local, "idx", obj.__dict__.get("grid_idx"))

    def __set__(self, obj, value) -> None:
        self.local.idx = value


class _Interrupted(Exception):
    """Raised inside a program thread that outlived its launch's timeout."""


def _interrupt(thread: threading.Thread) -> None:
    """Raise _Interrupted in ``thread`` at its next Python instruction."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Interrupted))


class _Schedule:
    """Run-until-blocked turns of one launch's programs (see the module docstring)."""

    def __init__(self, n: int) -> None:
        self.cond = threading.Condition()
        self.live = list(range(n))  # unfinished programs, in program order
        self.turn = 0
        self.idle = 0  # hand-overs since the last progress (a new atomic result or a finished program)
        self.last: dict[int, tuple] = {}  # each program's last atomic: operation, operands, result
        self.deadlocked = False

    def wait_turn(self, rank: int) -> None:
        with self.cond:
            while self.turn != rank and not self.deadlocked:
                self.cond.wait(POLL_INTERVAL)
            if self.deadlocked:
                raise Deadlock("every program waits for a flag nobody raises")

    def _next(self, rank: int) -> int:
        """The live program after ``rank`` (itself if alone); the caller holds the condition."""
        later = [r for r in self.live if r > rank]
        return later[0] if later else self.live[0]

    def atomic(self, rank: int, key: tuple) -> None:
        """After ``rank`` ran an atomic: hand over the interpreter if it repeated its last one with no effect."""
        if self.last.get(rank) != key:
            self.last[rank] = key
            self.idle = 0
            return
        with self.cond:
            self.idle += 1
            # every live program has had a turn since the last progress and spun in it: nobody can progress
            if self.idle > 2 * len(self.live):
                self.deadlocked = True
                self.cond.notify_all()
            else:
                self.turn = self._next(rank)
                self.cond.notify_all()
        self.wait_turn(rank)

    def finish(self, rank: int) -> None:
        with self.cond:
            nxt = self._next(rank)
            self.live.remove(rank)
            self.idle = 0
            self.turn = nxt  # ``rank`` itself only when it was the last one, and then nobody waits
            self.cond.notify_all()


def _atomic_hook(original):
    """Wrap an InterpreterBuilder atomic so that the program's schedule sees each call and its result."""

    def run(self, *args):
        result = original(self, *args)
        schedule = getattr(_program, "schedule", None)
        if schedule is not None:
            operands = tuple(a.data.tobytes() if hasattr(a, "data") else a for a in args)
            schedule.atomic(_program.rank, (original.__name__, operands, result.data.tobytes()))
        return result

    run.__name__ = original.__name__
    return run


class _ConcurrentGrid:
    """Stands in for a GridExecutor's kernel function: the grid loop's calls are collected, and the last one runs
    them all, each program in its own thread on a :class:`_Schedule`, before the executor copies the results
    back. It shows the executor the kernel's signature and globals, which is all the executor reads of it."""

    def __init__(self, fn, interpreter, timeout: float) -> None:
        self.fn = fn
        self.timeout = timeout
        self.builder = interpreter.interpreter_builder
        self.pending: list[tuple[tuple[int, int, int], dict]] = []
        self.__signature__ = inspect.signature(fn)
        self.__globals__ = fn.__globals__
        self.__name__ = fn.__name__

    def __call__(self, **args) -> None:
        idx = self.builder.grid_idx
        self.pending.append((idx, args))
        if idx != tuple(n - 1 for n in self.builder.grid_dim):
            return
        programs, errors = list(self.pending), []
        self.pending.clear()
        schedule = _Schedule(len(programs))

        def program(rank: int, program_idx, program_args) -> None:
            _program.schedule, _program.rank = schedule, rank
            try:
                schedule.wait_turn(rank)
                self.builder.grid_idx = program_idx
                self.fn(**program_args)
            except BaseException as e:  # noqa: BLE001 - re-raised in the launching thread
                errors.append(e)
            finally:
                schedule.finish(rank)

        threads = [threading.Thread(target=program, args=(r, i, a), daemon=True) for r, (i, a) in enumerate(programs)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [rank for rank, thread in enumerate(threads) if thread.is_alive()]
        for rank in stuck:
            _interrupt(threads[rank])
        for thread in threads:
            thread.join()
        self.builder.grid_idx = idx
        if stuck:
            raise TimeoutError(
                f"{self.fn.__name__}: programs {stuck} of {len(threads)} still running after {self.timeout:g} s"
            )
        if schedule.deadlocked:
            raise Deadlock(f"{self.fn.__name__}: all {len(threads)} programs wait for a flag nobody raises")
        if errors:
            raise errors[0]


@contextlib.contextmanager
def concurrent_interpreter(timeout: float = 600.0) -> Iterator[None]:
    """Run every interpreted launch's programs side by side, one thread per program, on the run-until-blocked
    schedule of the module docstring.

    Args:
        timeout: seconds a launch may take; programs still running then are interrupted and the launch raises
            TimeoutError.

    Raises:
        RuntimeError: if Triton's interpreter is not active (``TRITON_INTERPRET=1`` before triton is imported).
        Deadlock: (from a launch inside the block, wrapped in Triton's InterpreterError) when all of its programs
            wait for flags nobody raises.
    """
    from fastrnn.backend import interpreting

    if not interpreting():
        raise RuntimeError("concurrent_interpreter() needs Triton's interpreter: set TRITON_INTERPRET=1")
    from triton.runtime import interpreter as tri

    builder_cls = tri.InterpreterBuilder
    executor_cls = tri.GridExecutor
    original_init = executor_cls.__init__
    original_descriptor = builder_cls.__dict__.get("grid_idx")
    global _depth
    # an inner block keeps the outer block's hooks (wrapping them again would count every atomic twice)
    names = () if _depth else ("create_atomic_rmw", "create_atomic_cas")
    atomics = {name: getattr(builder_cls, name) for name in names}
    descriptor = _ThreadGridIdx()

    def init(self, fn, *args, **kwargs):
        original_init(self, fn, *args, **kwargs)
        self.fn = _ConcurrentGrid(fn, tri, timeout)

    _depth += 1
    builder_cls.grid_idx = descriptor
    executor_cls.__init__ = init
    for name, original in atomics.items():
        setattr(builder_cls, name, _atomic_hook(original))
    try:
        yield
    finally:
        for name, original in atomics.items():
            setattr(builder_cls, name, original)
        executor_cls.__init__ = original_init
        if original_descriptor is None:
            del builder_cls.grid_idx
        else:
            builder_cls.grid_idx = original_descriptor
        _depth -= 1
