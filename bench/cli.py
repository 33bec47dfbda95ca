"""The command line: ``python -m bench`` from the repository root (``fastrnn bench`` is a thin alias of it).

Exit status: 0 done (also when ``--max-seconds`` stopped it early); 1 some row is wrong, error or timeout; 2 bad
arguments or no CUDA device (without ``--device cpu``); 3 the row watchdog ended a hung row (rerun with
``--resume`` to go on).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench.grid import CELLS, DTYPES, GRID_NAMES, MODES, Case, first_contact, grid_plan, select_grid, session_plan
from bench.providers import FIRST_CONTACT_PROVIDERS, PROVIDERS, default_providers
from bench.timing import SLOW_MS

EXIT_USAGE = 2
RESULTS_DIR = Path(__file__).resolve().parent / "results"

DESCRIPTION = "Time fastrnn against cuDNN, ATen and a torch.nn cell loop (and FlashRNN) on the standard grid."
EPILOG = f"""\
benchmarks: {", ".join(GRID_NAMES)}
first contact (--first-contact): {", ".join(f"{c.bench} B{c.B} H{c.H} {d}" for c, d in first_contact())}
providers:  {", ".join(f"{p.name}{'' if p.default else ' (not default)'}" for p in PROVIDERS.values())}
            name:variant picks a variant: fastrnn:<backend> (auto, reference, triton, torch) or
            fastrnn:<strategy> (tiled, persistent); flashrnn:<its backend>
Every provider is checked against fastrnn's fp64 reference before it is timed; one that fails is not timed.
Each row is appended to <out>/<date>-<device>.csv and flushed the moment it exists: status ok, skipped, wrong,
error or timeout, with the reason in note. A .png plot and a .md table are written beside it at the end, and
--report CSV rebuilds them from any result CSV. Exit status: 0 done; 1 a row is wrong/error/timeout; 2 bad
arguments or no CUDA device; 3 the --row-timeout watchdog ended the process (rerun with --resume).
$FASTRNN_COMMIT sets the fastrnn_commit column where the tree has no .git. Columns: bench/README.md.
"""


class _UsageError(Exception):
    pass


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the harness's options to ``parser`` (``python -m bench`` or the ``fastrnn bench`` subcommand)."""
    if parser.description is None:
        parser.description = DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
        if parser.formatter_class is argparse.HelpFormatter:
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = parser.add_argument_group("what to run")
    what.add_argument("--grid", metavar="NAME[,NAME]", default=None,
                      help=f"benchmarks of the standard grid to run (default: all): {', '.join(GRID_NAMES)}")
    what.add_argument("--first-contact", action="store_true",
                      help="the order of a short GPU session: the first-contact rows (listed below) with cudnn and "
                           "fastrnn's strategies, then the rest of the grid with them, then every other provider")
    what.add_argument("--shape", metavar="B,T,H", default=None,
                      help="one custom shape (I = H, 1 layer) instead of the grid; the bench column reads 'custom'")
    what.add_argument("--cells", metavar="C[,C]", default=None,
                      help=f"cells among {', '.join(CELLS)}; filters the grid, or the cells of --shape "
                           "(default: the grid's; lstm for --shape)")
    what.add_argument("--dtypes", metavar="D[,D]", default=None,
                      help=f"dtypes among {', '.join(DTYPES)}; filters each benchmark's own dtypes "
                           "(default: the grid's; fp32 for --shape)")
    what.add_argument("--modes", metavar="M[,M]", default=",".join(MODES),
                      help="fwd (inference, no_grad) and/or fwd+bwd (training step) (default: %(default)s)")
    what.add_argument("--providers", metavar="P[,P]", default=None,
                      help="providers to compare, 'all' for every registered one (default: cudnn, "
                           "fastrnn:<strategy> for each Triton strategy on CUDA, then "
                           + ", ".join(n for n, p in PROVIDERS.items() if p.default and n != "cudnn")
                           + "); name:variant for a variant, e.g. fastrnn:reference, fastrnn:persistent")
    what.add_argument("--compile", action="store_true",
                      help="add the compile provider (the cell loop under torch.compile) to the provider list")
    what.add_argument("--device", choices=("cuda", "cpu"), default=None,
                      help="cuda (default; required for real results) or cpu: a smoke run of the harness "
                           "with a perf_counter timer, needs --shape")
    what.add_argument("--list", action="store_true",
                      help="print the plan (jobs in order, providers, row count) and exit; needs no GPU")
    what.add_argument("--env", action="store_true",
                      help="print the device and versions line (and where fastrnn and its kernels are imported "
                           "from) and exit; imports every module the harness runs")
    how = parser.add_argument_group("timing and limits")
    how.add_argument("--warmup", type=float, default=25, metavar="MS",
                     help="warm-up time per timing in ms (do_bench's warmup) (default: %(default)s)")
    how.add_argument("--rep", type=float, default=100, metavar="MS",
                     help="timed repetition time per timing in ms (do_bench's rep) (default: %(default)s)")
    how.add_argument("--slow-ms", type=float, default=SLOW_MS, metavar="MS",
                     help="a GPU call slower than this is timed by 3 calls instead of do_bench's 8 or more "
                          "(default: %(default)s)")
    how.add_argument("--max-seconds", type=float, default=None, metavar="S",
                     help="start no new row after S seconds; the rows so far are kept and reported (default: none)")
    how.add_argument("--row-timeout", type=float, default=None, metavar="S",
                     help="end the process (exit 3) when one row takes longer than S seconds, after writing it "
                          "with status timeout: a hung GPU kernel cannot be interrupted (default: none)")
    out = parser.add_argument_group("results")
    out.add_argument("--out", metavar="DIR", default=None,
                     help="directory of the result CSV <date>-<device>.csv (default: bench/results of this checkout; "
                          "a --device cpu smoke run writes nothing unless --out is given)")
    out.add_argument("--resume", action="store_true",
                     help="append to the newest CSV of today and this device in --out instead of a new one, "
                          "skipping the rows it already has (and providers that hung)")
    out.add_argument("--no-plot", action="store_true", help="do not write the PNG plot (the .md table still)")
    out.add_argument("--report", metavar="CSV", default=None,
                     help="run nothing: rebuild the PNG plot and the markdown table of CSV beside it, print the table")


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


def _providers(args, device) -> list[str]:
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
    if args.compile and "compile" not in providers:
        providers.append("compile")
    return providers


def plan(args, device) -> tuple[list, list[str]]:
    """(jobs, modes) of parsed ``args``. Raises _UsageError."""
    modes = _parse_choices(args.modes, MODES, "modes")
    dtypes = _parse_choices(args.dtypes, DTYPES, "dtypes")
    cells = _parse_choices(args.cells, CELLS, "cells")
    providers = _providers(args, device)
    exclusive = [f for f, v in (("--shape", args.shape), ("--grid", args.grid), ("--first-contact",
                                                                                args.first_contact)) if v]
    if len(exclusive) > 1:
        raise _UsageError(f"{' and '.join(exclusive)} are exclusive: each picks what to run")
    if args.first_contact:
        if cells or dtypes:
            raise _UsageError("--first-contact runs the whole grid in its own order: no --cells/--dtypes")
        first = [p for p in FIRST_CONTACT_PROVIDERS if p in providers]
        return session_plan(first, providers), modes
    if args.shape is not None:
        try:
            B, T, H = (int(v) for v in args.shape.split(","))
        except ValueError:
            raise _UsageError(f"--shape must be B,T,H (three positive integers), got {args.shape!r}") from None
        if min(B, T, H) <= 0:
            raise _UsageError(f"--shape must be B,T,H (three positive integers), got {args.shape!r}")
        pairs = [(Case("custom", cell, B=B, T=T, H=H, I=H), dt) for cell in (cells or ["lstm"])
                 for dt in (dtypes or ["fp32"])]
        return grid_plan(pairs, providers), modes
    try:
        pairs = select_grid(None if args.grid is None else _csv_list(args.grid), cells, dtypes)
    except ValueError as e:
        raise _UsageError(f"--grid: {e}") from None
    if not pairs:
        raise _UsageError("nothing to run: the --grid/--cells/--dtypes filters leave no benchmark")
    return grid_plan(pairs, providers), modes


def _fail(msg: str) -> int:
    print(f"bench: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _report(path: str, png: bool) -> int:
    from bench.report import report

    try:
        text, written = report(Path(path), png=png)
    except (OSError, ValueError) as e:
        return _fail(f"--report: {e}")
    print(text)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def print_environment(device) -> None:
    """The device and versions lines of a session's ``versions.txt``; imports fastrnn's Triton ops too."""
    import platform

    import torch

    import bench.run  # noqa: F401 - every harness module, so a broken import shows here
    import fastrnn
    import fastrnn.ops  # noqa: F401 - the Triton ops and fastrnn.kernels
    from bench.providers import fastrnn_strategies
    from bench.results import environment

    env = environment(device)
    line = env["device"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        line += f" (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB)"
    print(f"device: {line}")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    print(f"torch {env['torch']}, cuda {env['cuda'] or '-'}, cudnn {cudnn or '-'}, triton {env['triton'] or '-'}, "
          f"python {platform.python_version()}")
    kernels = Path(sys.modules["fastrnn.kernels"].__file__).parent
    print(f"fastrnn {env['fastrnn_commit']} from {Path(fastrnn.__file__).parent}, kernels from {kernels}; "
          f"strategies: {', '.join(fastrnn_strategies()) or 'none'}")


def main(args: argparse.Namespace) -> int:
    """Run the harness with parsed ``args`` (see :func:`add_arguments`); returns the exit status."""
    if args.report is not None:
        return _report(args.report, not args.no_plot)
    import torch

    from bench import run
    from bench.report import counts, fill_ratios, markdown_table, report
    from bench.results import RowWriter, environment, read_rows, result_path

    device = torch.device(args.device or "cuda")
    if args.env:
        if device.type == "cuda" and not torch.cuda.is_available():
            return _fail("no CUDA device (--env --device cpu prints the CPU line)")
        print_environment(device)
        return 0
    if device.type == "cuda" and not torch.cuda.is_available() and not args.list:
        return _fail("no CUDA device: the benchmarks time GPU kernels. For a smoke test of the harness on "
                     "the CPU use --device cpu --shape B,T,H (e.g. --shape 2,6,16).")
    if device.type == "cpu" and args.shape is None:
        return _fail("--device cpu runs a smoke test of one tiny custom shape: give --shape B,T,H "
                     "(e.g. --shape 2,6,16); the standard grid is GPU-sized")
    try:
        jobs, modes = plan(args, device)
    except _UsageError as e:
        return _fail(str(e))
    if args.warmup < 0 or args.rep <= 0 or args.slow_ms <= 0:
        return _fail("--warmup must be >= 0, --rep and --slow-ms > 0 (milliseconds)")
    if args.list:
        for job in jobs:
            print(f"{job.case.id} {job.dtype}: {', '.join(job.providers)}")
        print(f"{len(jobs)} jobs x {len(modes)} modes: {sum(len(j.providers) for j in jobs) * len(modes)} rows")
        return 0

    path = None
    if args.out is not None or device.type == "cuda":
        env = environment(device)
        path = result_path(Path(args.out) if args.out is not None else RESULTS_DIR, env["device"], env["date"],
                           resume=args.resume)
    else:
        print("(CPU smoke run: no files written; pass --out DIR to write them)", file=sys.stderr)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        print("CPU SMOKE RUN: perf_counter timings of the harness plumbing; these are not benchmark results.",
              file=sys.stderr)
        torch.set_num_threads(1)  # tiny shapes: thread spin-up dominates on a shared CPU
    done = read_rows(path) if args.resume and path is not None and path.exists() else []
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    writer = None
    try:
        if path is not None:
            writer = RowWriter(path)
            log(f"rows go to {path} as they are measured" + (f" ({len(done)} there already)" if done else ""))
        outcome = run.run_plan(jobs, modes, device, writer, warmup=args.warmup, rep=args.rep, slow_ms=args.slow_ms,
                               max_seconds=args.max_seconds, row_timeout=args.row_timeout, done=done, log=log)
    except ValueError as e:  # a CSV of other columns to resume
        return _fail(str(e))
    finally:
        torch.set_num_threads(threads)
        if writer is not None:
            writer.close()
    if path is not None and path.exists():
        _, written = report(path, png=not args.no_plot)
        log("wrote " + ", ".join(str(p) for p in [path, *written]))
    print(markdown_table(fill_ratios(outcome.rows)))
    log(f"this run: {counts(outcome.rows)}" + (f"; {outcome.not_started} rows not started (--max-seconds)"
                                                 if outcome.stopped_by_deadline else ""))
    if outcome.bad:
        log(f"{len(outcome.bad)} row(s) are wrong, error or timeout (not timed):")
        for r in outcome.bad:
            log(f"  {r['status'].upper()}: {r['bench']} {r['cell']} B{r['B']} T{r['T']} H{r['H']} {r['dtype']} "
                f"{r['mode']} {r['provider']}: {r['note']}")
        return run.EXIT_BAD_ROWS
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m bench [options]``."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    add_arguments(parser)
    return main(parser.parse_args(argv))
