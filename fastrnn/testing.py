"""Testing aids: Triton's interpreter with a launch's programs running concurrently.

Triton's interpreter (``TRITON_INTERPRET=1``) runs the programs of a launch one after another, so a program
that waits for another one (the persistent kernels' flags, a grid barrier) spins forever. Inside
:func:`concurrent_interpreter` every launch runs each of its programs in a thread of its own, with a per-thread
program id, so such kernels run on the CPU as they would on a GPU whose programs are all resident, and
``fastrnn.ops`` plans persistent grids of up to ``$FASTRNN_PERSISTENT_PROGRAMS`` (default
:data:`DEFAULT_PROGRAMS`) programs. Threads switch every :data:`SWITCH_INTERVAL` seconds (Python's default,
5 ms, would let a spinning program hold the interpreter for long stretches); ``stagger`` delays program i by
i * stagger seconds, so a program that fails to wait reads its inputs before they are written (a broken
barrier fails the tests instead of passing by luck).

Usage::

    with fastrnn.testing.concurrent_interpreter():
        out = module(x)   # persistent kernels with several programs, in threads
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import sys
import threading
import time
from collections.abc import Iterator

#: Programs of a persistent grid inside concurrent_interpreter() when $FASTRNN_PERSISTENT_PROGRAMS is unset.
DEFAULT_PROGRAMS = 4
#: The interpreter's thread switch interval inside concurrent_interpreter(), in seconds.
SWITCH_INTERVAL = 1e-5

_active: list[float] = []  # stagger of each active concurrent_interpreter(), innermost last


def concurrent() -> bool:
    """Whether a :func:`concurrent_interpreter` block is active."""
    return bool(_active)


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
    """Raise _Interrupted in ``thread`` at its next Python instruction (an interpreted kernel spinning on a flag
    executes Python all the time)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Interrupted))


class _ConcurrentGrid:
    """Stands in for a GridExecutor's kernel function: the grid loop's calls are collected, and the last one runs
    them all, each program in its own thread, before the executor copies the results back. It shows the
    executor the kernel's signature and globals, which is all the executor reads of it."""

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
        stagger = _active[-1]

        def program(rank: int, program_idx, program_args) -> None:
            time.sleep(rank * stagger)
            self.builder.grid_idx = program_idx
            try:
                self.fn(**program_args)
            except BaseException as e:  # noqa: BLE001 - re-raised in the launching thread
                errors.append(e)

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
                f"{self.fn.__name__}: programs {stuck} of {len(threads)} still running after {self.timeout:g} s "
                "(waiting for a flag nobody raised?)"
            )
        if errors:
            raise errors[0]


@contextlib.contextmanager
def concurrent_interpreter(stagger: float = 0.0, timeout: float = 600.0) -> Iterator[None]:
    """Run every interpreted launch's programs concurrently, one thread per program (see the module docstring).

    Args:
        stagger: seconds by which each program's start trails the previous one's.
        timeout: seconds a launch may take; programs still running then are interrupted and the launch raises
            TimeoutError (a program waiting for a flag that is never raised would otherwise spin forever).

    Raises:
        RuntimeError: if Triton's interpreter is not active (``TRITON_INTERPRET=1`` before triton is imported).
    """
    from fastrnn.backend import interpreting

    if not interpreting():
        raise RuntimeError("concurrent_interpreter() needs Triton's interpreter: set TRITON_INTERPRET=1")
    from triton.runtime import interpreter as tri

    builder_cls = tri.InterpreterBuilder
    executor_cls = tri.GridExecutor
    original_init = executor_cls.__init__
    original_descriptor = builder_cls.__dict__.get("grid_idx")
    descriptor = _ThreadGridIdx()

    def init(self, fn, *args, **kwargs):
        original_init(self, fn, *args, **kwargs)
        self.fn = _ConcurrentGrid(fn, tri, timeout)

    switch = sys.getswitchinterval()
    _active.append(stagger)
    builder_cls.grid_idx = descriptor
    executor_cls.__init__ = init
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        executor_cls.__init__ = original_init
        if original_descriptor is None:
            del builder_cls.grid_idx
        else:
            builder_cls.grid_idx = original_descriptor
        _active.pop()
