"""Choosing the CPU thread count while training on a shared machine.

On a small CPU shared with other jobs, torch's intra-op thread pool can be several times slower with all
cores than with one: a parallel region waits for its slowest thread, and a thread whose core is busy with
another process stalls every time step of the recurrence. Measured on a 2-core machine with three other busy
processes: 2 threads ~600 ms per step, 1 thread ~200 ms, for the default CPU model.

:class:`ThreadTuner` therefore tries each candidate count for a few steps, keeps the fastest, and tries again
periodically, as the load of the machine changes. Changing the thread count may change float rounding, so it
is used only when a time budget already makes the run depend on the clock; with ``--max-minutes 0`` or an
explicit ``--threads`` the count stays fixed.
"""

from __future__ import annotations

import statistics

import torch


class ThreadTuner:
    """Periodically measures step time for each thread count in ``candidates`` and keeps the fastest.

    Args:
        candidates: thread counts to try, e.g. ``[1, os.cpu_count()]``.
        probe_steps: steps timed per candidate; the first one after a switch is discarded.
        every_s: seconds between probes.
    """

    def __init__(self, candidates: list[int], probe_steps: int = 4, every_s: float = 20.0) -> None:
        self.candidates = sorted(set(candidates))
        self.probe_steps, self.every_s = probe_steps, every_s
        self.pending: list[int] = list(self.candidates)
        self.times: dict[int, list[float]] = {}
        self.next_probe = 0.0
        self.chosen = torch.get_num_threads()

    def before_step(self, now: float) -> None:
        if not self.pending and now >= self.next_probe and len(self.candidates) > 1:
            self.pending, self.times = list(self.candidates), {}
        n = self.pending[0] if self.pending else self.chosen
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def after_step(self, seconds: float, now: float) -> None:
        if not self.pending:
            return
        n = self.pending[0]
        self.times.setdefault(n, []).append(seconds)
        if len(self.times[n]) >= self.probe_steps:
            self.pending.pop(0)
            if not self.pending:
                self.chosen = min(self.times, key=lambda k: statistics.median(self.times[k][1:]))
                torch.set_num_threads(self.chosen)
                self.next_probe = now + self.every_s
