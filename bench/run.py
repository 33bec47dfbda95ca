"""Execute a plan: for every job, mode and provider, build -> correctness gate -> time -> one row, written at once.

Order within a job: cudnn first (so every later row of the same benchmark, dtype and mode knows its
``ratio_vs_cudnn`` when it is written), then the job's providers in their order; modes in the order given.

Time limits:
    max_seconds   no new row (or job) starts after this many seconds; the rows not started are counted
    row_timeout   a watchdog thread ends the process (exit status :data:`EXIT_HUNG`) when one row takes longer,
                  after writing that row with status ``timeout``: a hung GPU kernel cannot be interrupted from
                  Python, and the CSV keeps every row before it. A rerun with ``--resume`` skips the rows
                  already written and every later row of a provider that hung (status ``skipped``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from bench import gate, timing
from bench.grid import Job, flops
from bench.problem import Problem
from bench.providers import Runner, Unsupported, build_runner
from bench.results import RowWriter, environment, make_row, row_key

EXIT_BAD_ROWS = 1  # some row is wrong, error or timeout
EXIT_HUNG = 3  # the watchdog ended the process


@dataclasses.dataclass
class Outcome:
    """What a run produced: every row (also those written to the CSV), rows not started (deadline)."""

    rows: list[dict]
    not_started: int = 0
    stopped_by_deadline: bool = False

    @property
    def bad(self) -> list[dict]:
        return [r for r in self.rows if r["status"] in ("wrong", "error", "timeout")]


class Watchdog:
    """Ends the process when an armed row runs past ``seconds``: writes the row ``on_timeout`` returns, then
    ``os._exit(EXIT_HUNG)``. Python cannot interrupt a thread stuck in a GPU synchronisation; a new process can
    go on (``--resume``)."""

    def __init__(self, seconds: float, on_timeout: Callable[[str, dict | None], None]) -> None:
        self.seconds, self.on_timeout = seconds, on_timeout
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._what: tuple[str, dict | None] = ("", None)
        threading.Thread(target=self._watch, name="bench-watchdog", daemon=True).start()

    def arm(self, label: str, row: dict | None = None) -> None:
        with self._lock:
            self._deadline, self._what = time.monotonic() + self.seconds, (label, row)

    def disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.seconds / 4))
            with self._lock:
                fired = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if fired:
                try:
                    self.on_timeout(*what)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(EXIT_HUNG)


def run_plan(
    jobs: Sequence[Job],
    modes: Sequence[str],
    device: torch.device | str,
    writer: RowWriter | None = None,
    *,
    warmup: float = 25,
    rep: float = 100,
    slow_ms: float = timing.SLOW_MS,
    max_seconds: float | None = None,
    row_timeout: float | None = None,
    done: Iterable[dict] = (),
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Run every (job, mode, provider) of ``jobs`` not already in ``done`` (rows read back from the CSV being
    appended to); each row goes to ``writer`` the moment it exists. See the module docstring for the limits."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    env = environment(device)
    log = log or (lambda s: None)
    start = time.monotonic()
    done = list(done)
    done_keys = {row_key(r) for r in done}
    hung = {r["provider"] for r in done if r["status"] == "timeout"}
    base = {row_key(r)[:-1]: r["ms_p50"]  # (benchmark, shape, dtype, mode) -> cudnn's ms_p50
            for r in done if r["provider"] == "cudnn" and r["status"] == "ok" and r["ms_p50"]}
    outcome = Outcome([])

    def emit(row: dict) -> None:
        outcome.rows.append(row)
        if writer is not None:
            writer.write(row)
        done_keys.add(row_key(row))
        what = f"{row['ms_p50']:.3f} ms" if row["ms_p50"] is not None else row["note"]
        ratio = f" (x{row['ratio_vs_cudnn']:.2f} cudnn)" if row["ratio_vs_cudnn"] is not None else ""
        log(f"[{time.monotonic() - start:6.1f} s] {row['bench']} {row['cell']} B{row['B']} T{row['T']} H{row['H']} "
            f"{row['dtype']} {row['mode']} {row['provider']}: {row['status']} {what}{ratio}")

    watchdog = None
    if row_timeout is not None:
        def on_timeout(label: str, row: dict | None) -> None:
            log(f"watchdog: {label} took over {row_timeout:g} s; ending the process (rerun with --resume)")
            if row is not None:
                emit(row)

        watchdog = Watchdog(row_timeout, on_timeout)

    def pending(job: Job) -> list[tuple[str, str]]:
        providers = sorted(job.providers, key=lambda p: p != "cudnn")  # stable: cudnn first, the rest in order
        return [(m, p) for m in modes for p in providers
                if row_key(make_row(job.case, job.dtype, m, p, env)) not in done_keys]

    def out_of_time() -> bool:
        return max_seconds is not None and time.monotonic() - start >= max_seconds

    for j, job in enumerate(jobs):
        todo = pending(job)
        if not todo:
            continue
        if out_of_time():
            outcome.stopped_by_deadline = True
            outcome.not_started = sum(len(pending(k)) for k in jobs[j:])
            log(f"deadline: {max_seconds:g} s reached; {outcome.not_started} rows not started")
            break
        case, dtype = job.case, job.dtype
        row = functools.partial(make_row, case, dtype, env=env)  # row(mode, spec, status=..., ...)
        if watchdog:
            watchdog.arm(f"setting up {case.id} {dtype}")
        try:
            problem = Problem(case, dtype, device)
            problem.oracle(grads=any(m == "fwd+bwd" for m, _ in todo))
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the job's rows say so, the run goes on
            for mode, spec in todo:
                emit(row(mode, spec, status="error", note=f"setup failed: {type(e).__name__}: {e}"))
            if cuda:
                torch.cuda.empty_cache()
            continue
        runners: dict[str, Runner | dict] = {}
        for i, (mode, spec) in enumerate(todo):
            if out_of_time():
                outcome.stopped_by_deadline = True
                outcome.not_started = len(todo) - i + sum(len(pending(k)) for k in jobs[j + 1:])
                log(f"deadline: {max_seconds:g} s reached; {outcome.not_started} rows not started")
                break
            if spec in hung:
                emit(row(mode, spec, status="skipped", note="not run: an earlier row of this provider hung"))
                continue
            if watchdog:
                watchdog.arm(f"{case.id} {dtype} {mode} {spec}", row(mode, spec, status="timeout",
                             note=f"no result after {row_timeout:g} s; the process was ended by the watchdog"))
            emit(_one_row(problem, runners, mode, spec, row, cuda, warmup, rep, slow_ms, base))
        if watchdog:
            watchdog.disarm()
        del problem, runners
        if cuda:
            torch.cuda.empty_cache()
        if outcome.stopped_by_deadline:
            break
    if watchdog:
        watchdog.disarm()
    return outcome


def _one_row(problem: Problem, runners: dict, mode: str, spec: str, row: Callable[..., dict], cuda: bool,
             warmup: float, rep: float, slow_ms: float, base: dict) -> dict:
    """Build (once per job), gate, time: the row of (mode, spec)."""
    if spec not in runners:
        try:
            runners[spec] = build_runner(spec, problem)
        except Unsupported as e:
            runners[spec] = {"status": "skipped", "note": str(e)}
        except Exception as e:  # noqa: BLE001 - a provider that cannot even be built is a row, not a crash
            runners[spec] = {"status": "error", "note": f"build failed: {type(e).__name__}: {e}"}
    runner = runners[spec]
    if isinstance(runner, dict):
        return row(mode, spec, **runner)
    fn, grads = timing.step_fn(runner, problem, mode)
    meter = timing.PeakMemory(problem.device)
    try:
        wrong = gate.check(runner, problem, mode)
        if wrong is not None:  # only a result that passed the gate is ever timed
            return row(mode, spec, status="wrong", note=wrong)
        if cuda:
            (p50, p20, p80), note = timing.time_cuda(fn, grads, warmup, rep, slow_ms, meter)
        else:
            (p50, p20, p80), note = timing.time_cpu(fn, grads, warmup, rep)
    except Unsupported as e:
        return row(mode, spec, status="skipped", note=str(e))
    except Exception as e:  # noqa: BLE001 - a crash (or out of memory) in one provider does not end the run
        for g in grads:
            g.grad = None
        if cuda:
            torch.cuda.empty_cache()
        return row(mode, spec, status="error", note=f"failed to run: {type(e).__name__}: {e}")
    case = problem.case
    key = row_key(row(mode, spec))[:-1]
    if spec == "cudnn":
        base[key] = p50
    ratio = p50 / base[key] if base.get(key) else None
    return row(mode, spec, note=note, ms_p50=p50, ms_p20=p20, ms_p80=p80, peak_mb=meter.mb,
               tflops=flops(case, mode, problem.tokens) / (p50 * 1e-3) / 1e12 if p50 > 0 else None,
               us_per_step=p50 * 1e3 / case.T, ratio_vs_cudnn=ratio)
