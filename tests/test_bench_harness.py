"""The benchmark harness (bench/) on the CPU: grid data, plans, the oracle, providers, the correctness gate,
running a plan, and the command line. The CSV writer, kills and reports are in test_bench_results.py.

Nothing here times anything meaningful: CPU smoke runs only check the plumbing (tiny shapes, ~ms timers).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
import torch

from bench import cli, gate, grid, providers, run
from bench.grid import Case, Job
from bench.problem import Problem
from bench.providers import PROVIDERS, Provider, Runner
from bench.results import CPU_DEVICE_LABEL, CSV_COLUMNS, make_row

BENCH_README = Path(__file__).resolve().parents[1] / "bench" / "README.md"
#: the protocol the grid comes from, where it lies beside the repository (a development machine)
BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "shared" / "BENCHMARKS.md"

#: the standard grid as the protocol states it: name -> (cell, [(B, T, H)], dtypes, layers, bidir, packed)
EXPECTED = {
    "fastrnns-default": ("lstm", [(64, 100, 512)], {"fp32"}, 1, False, None),
    "flashrnn-shape": ("lstm", [(16, 1024, 768)], {"fp16", "bf16"}, 1, False, None),
    "small-batch": ("lstm", [(b, 1024, h) for b in (1, 4, 8) for h in (256, 512, 1024)], {"bf16", "fp32"}, 1, False,
                    None),
    "large-batch": ("lstm", [(256, 256, 1024)], {"bf16"}, 1, False, None),
    "packed": ("lstm", [(32, 1000, 512)], {"fp32"}, 1, False, (500, 1000)),
    "deep/bidir": ("lstm", [(32, 256, 512)], {"bf16"}, 2, True, None),
}

SMOKE_CASE = Case("custom", "lstm", B=2, T=3, H=8, I=8)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes on a shared CPU: one intra-op thread avoids thread spin-up dominating (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def _run(cases, specs, modes=grid.MODES, **kw):
    kw.setdefault("warmup", 0)
    kw.setdefault("rep", 1)
    return run.run_plan(grid.grid_plan(cases, specs), modes, "cpu", **kw)


# -- grid and plans -----------------------------------------------------------------------------------------
def test_grid_matches_the_protocol():
    by_name = {}
    for case in grid.GRID:
        by_name.setdefault(case.bench, []).append(case)
    assert set(by_name) == set(EXPECTED) | {"gru", "rnn_tanh"}
    for name, (cell, shapes, dtypes, layers, bidir, packed) in EXPECTED.items():
        cases = by_name[name]
        assert sorted((c.B, c.T, c.H) for c in cases) == sorted(shapes), name
        for c in cases:
            assert (c.cell, set(c.dtypes), c.layers, c.bidir, c.lengths, c.I) == (cell, dtypes, layers, bidir,
                                                                                   packed, c.H), name
    # gru / rnn_tanh: as fastrnns-default and flashrnn-shape, every cell
    for cell in ("gru", "rnn_tanh"):
        got = sorted((c.cell, c.B, c.T, c.H, c.I, c.dtypes) for c in by_name[cell])
        want = sorted((cell, c.B, c.T, c.H, c.I, c.dtypes) for n in ("fastrnns-default", "flashrnn-shape")
                      for c in by_name[n])
        assert got == want


@pytest.mark.parametrize(("doc", "heading"), [(BENCH_README, "## The grid"), (BENCHMARKS_MD, "## The standard grid")],
                         ids=["bench-readme", "protocol"])
def test_grid_matches_the_documented_table(doc, heading):
    """Every row of the grid table in bench/README.md (and the protocol's, where present) is in GRID with its
    B, T, H and dtypes (read from the file)."""
    if not doc.exists():
        pytest.skip(f"{doc.name} is not beside the repository")
    text = doc.read_text()
    table = text[text.index(heading):].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("|") and not line.startswith("|---") and not line.startswith("| name")]
    assert len(rows) >= 7
    names = set(grid.GRID_NAMES)
    for name, B, T, H, dtypes, _why in rows:
        if name.startswith("gru"):
            assert {"gru", "rnn_tanh"} <= names
            continue
        assert name in names, name
        cases = [c for c in grid.GRID if c.bench == name]
        ints = lambda s: [int(v) for v in re.findall(r"\d+", s)]  # noqa: E731
        assert {c.B for c in cases} == set(ints(B)), name
        assert {c.T for c in cases} == {ints(T)[0]}, name
        want_h = {ints(H)[0]} if "layers" in H else set(ints(H))  # "512, 2 layers, bidirectional"
        assert {c.H for c in cases} == want_h, name
        want_dtypes = set(re.findall(r"fp16|bf16|fp32", dtypes))
        assert all(set(c.dtypes) == want_dtypes for c in cases), name


def test_select_grid_filters_and_rejects_unknown_names():
    pairs = grid.select_grid(["small-batch"], dtypes=["bf16"])
    assert len(pairs) == 9 and all(dt == "bf16" and c.bench == "small-batch" for c, dt in pairs)
    assert {c.bench for c, _ in grid.select_grid(["deep-bidir"])} == {"deep/bidir"}
    assert {c.cell for c, _ in grid.select_grid(cells=["gru"])} == {"gru"}
    with pytest.raises(ValueError, match="nope"):
        grid.select_grid(["nope"])


def test_session_plan_puts_the_first_contact_first_and_covers_the_grid_once():
    first = list(providers.FIRST_CONTACT_PROVIDERS)
    every = providers.default_providers("cuda")
    assert every[:3] == first  # cudnn, fastrnn:tiled, fastrnn:persistent lead the default list on CUDA
    jobs = grid.session_plan(first, every)
    head = grid.first_contact()
    assert [(j.case.bench, j.case.B, j.case.H, j.dtype) for j in jobs[:len(head)]] == list(grid.FIRST_CONTACT)
    assert [(c.bench, dt) for c, dt in head] == [
        ("flashrnn-shape", "fp16"), ("flashrnn-shape", "bf16"), ("small-batch", "bf16"),
        ("fastrnns-default", "fp32"), ("large-batch", "bf16")]
    pairs = grid.select_grid()
    n = len(pairs)
    assert all(j.providers == tuple(first) for j in jobs[:n])  # every pair with the first providers ...
    assert all(set(j.providers).isdisjoint(first) for j in jobs[n:])  # ... before any other provider
    assert jobs[len(head)].case.bench == grid.REST_ORDER[0]
    rows = [(j.case.id, j.dtype, p) for j in jobs for p in j.providers]
    assert len(rows) == len(set(rows)) == n * len(every)


def test_flop_convention():
    case = Case("x", "lstm", B=2, T=3, H=4, I=5)
    fwd = 2 * 2 * 3 * 16 * (4 + 5)  # 2*B*T*G*(H + I), G = 4H
    assert grid.flops(case, "fwd") == fwd
    assert grid.flops(case, "fwd+bwd") == 3 * fwd
    deep = Case("x", "gru", B=1, T=1, H=4, I=5, layers=2, bidir=True)
    assert grid.flops(deep, "fwd") == 2 * (2 * 12 * (4 + 5)) + 2 * (2 * 12 * (4 + 8))
    assert grid.flops(case, "fwd", tokens=5) == 2 * 5 * 16 * 9  # packed: valid tokens instead of B*T


# -- the oracle and the providers ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    Case("t", "lstm", B=3, T=5, H=8, I=6, lengths=(2, 5)),
    Case("t", "gru", B=2, T=4, H=8, I=6, layers=2, bidir=True),
    Case("t", "rnn_relu", B=2, T=4, H=8, I=8),
], ids=lambda c: c.id)
def test_oracle_is_the_fp64_reference_and_agrees_with_torch_nn(case):
    """fastrnn's reference loop in fp64 (the oracle) against torch.nn in fp64 on the same weights and inputs."""
    problem = Problem(case, "fp32", "cpu")
    ref = problem.oracle(grads=True)
    assert all(v.dtype == torch.float64 for v in ref.values())
    m = problem.module.double()
    x = problem.x.detach().double().requires_grad_()
    hx = tuple(s.double() for s in problem.hx) if problem.lstm else problem.hx.double()
    out, hidden = m(problem.pack(x), hx)
    out = out.data if case.lengths else out
    states = tuple(hidden) if problem.lstm else (hidden,)
    torch.autograd.backward([out, *states], [problem.grad_out.double(), *(g.double() for g in problem.grad_states)])
    want = {"output": out, "h_n": states[0], "grad:input": x.grad}
    if problem.lstm:
        want["c_n"] = states[1]
    want.update({f"grad:{n}": p.grad for n, p in m.named_parameters()})
    assert set(want) == set(ref)
    for name, value in want.items():
        torch.testing.assert_close(ref[name], value.detach(), rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("case", [SMOKE_CASE, Case("t", "gru", B=2, T=3, H=8, I=6, layers=2, bidir=True)],
                         ids=lambda c: c.id)
def test_gate_passes_the_real_providers(case):
    problem = Problem(case, "fp32", "cpu")
    for spec in ("fastrnn:reference", "fastrnn:torch", "fastrnn", "loop"):
        for mode in grid.MODES:
            assert gate.check(providers.build_runner(spec, problem), problem, mode) is None, (spec, mode)


def test_packed_case_runs_fastrnn_and_skips_the_cell_loop():
    rows = _run([(Case("t", "lstm", B=3, T=4, H=8, I=6, lengths=(2, 4)), "fp32")],
                ["loop", "fastrnn:reference", "fastrnn:torch"]).rows
    status = {(r["mode"], r["provider"]): r["status"] for r in rows}
    assert status == {(m, p): "skipped" if p == "loop" else "ok" for m in grid.MODES
                      for p in ("loop", "fastrnn:reference", "fastrnn:torch")}


def test_strategy_providers_are_cuda_only_rows():
    rows = _run([(SMOKE_CASE, "fp32")], ["fastrnn:tiled", "fastrnn:persistent", "cudnn"], ["fwd"]).rows
    assert [(r["provider"], r["status"]) for r in rows] == [
        ("cudnn", "skipped"), ("fastrnn:tiled", "skipped"), ("fastrnn:persistent", "skipped")]
    assert all("CUDA" in r["note"] for r in rows)


# -- the correctness gate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("broken", ["output", "grad"])
def test_wrong_provider_is_a_row_and_never_timed(monkeypatch, broken):
    calls = {"n": 0}

    def build(problem, variant):
        runner = providers.build_runner("loop", problem)
        inner = runner.forward

        def forward():
            calls["n"] += 1
            out, states = inner()
            if broken == "output":
                return out * 1.01 + 0.01, states
            return out + 0.5 * (out - out.detach()), states  # right values, gradient scaled by 1.5

        return Runner(forward, runner.params, runner.context)

    monkeypatch.setitem(PROVIDERS, "broken", Provider("broken", build, default=False))
    rows = _run([(SMOKE_CASE, "fp32")], ["loop", "broken"]).rows
    status = {(r["mode"], r["provider"]): r["status"] for r in rows}
    wrong = [r for r in rows if r["status"] == "wrong"]
    assert all(r["ms_p50"] is None and r["tflops"] is None for r in wrong)
    if broken == "output":
        assert status == {("fwd", "loop"): "ok", ("fwd+bwd", "loop"): "ok", ("fwd", "broken"): "wrong",
                          ("fwd+bwd", "broken"): "wrong"}
        assert calls["n"] == 2  # one gate call per mode, no timing calls
        assert "output" in wrong[0]["note"]
    else:
        assert status[("fwd", "broken")] == "ok" and status[("fwd+bwd", "broken")] == "wrong"
        assert "grad:" in wrong[0]["note"]


def test_a_provider_that_raises_is_an_error_row_and_the_run_goes_on(monkeypatch):
    def bad_build(problem, variant):
        raise RuntimeError("cannot build")

    def bad_run(problem, variant):
        def forward():
            raise RuntimeError("kernel exploded")

        return Runner(forward)

    monkeypatch.setitem(PROVIDERS, "bad_build", Provider("bad_build", bad_build, default=False))
    monkeypatch.setitem(PROVIDERS, "bad_run", Provider("bad_run", bad_run, default=False))
    outcome = _run([(SMOKE_CASE, "fp32")], ["bad_build", "bad_run", "loop"], ["fwd"])
    assert [(r["provider"], r["status"]) for r in outcome.rows] == [
        ("bad_build", "error"), ("bad_run", "error"), ("loop", "ok")]
    assert "cannot build" in outcome.rows[0]["note"] and "kernel exploded" in outcome.rows[1]["note"]
    assert len(outcome.bad) == 2


# -- running a plan -----------------------------------------------------------------------------------------
def test_smoke_run_rows():
    rows = _run([(SMOKE_CASE, "fp32")], ["fastrnn:reference", "loop", "cudnn"]).rows
    # cudnn first (it is the ratio's base), then the plan's order; modes in order
    assert [(r["mode"], r["provider"]) for r in rows] == [
        (m, p) for m in grid.MODES for p in ("cudnn", "fastrnn:reference", "loop")]
    for r in rows:
        assert tuple(r) == CSV_COLUMNS
        assert r["device"] == CPU_DEVICE_LABEL and r["torch"] == torch.__version__ and r["fastrnn_commit"]
        assert (r["B"], r["T"], r["H"], r["I"], r["layers"], r["bidir"]) == (2, 3, 8, 8, 1, False)
        if r["provider"] == "cudnn":
            assert r["status"] == "skipped" and r["ms_p50"] is None and "CUDA" in r["note"]
            continue
        assert r["status"] == "ok" and r["note"] == ""
        assert 0 < r["ms_p20"] <= r["ms_p50"] <= r["ms_p80"]
        assert r["ratio_vs_cudnn"] is None and r["peak_mb"] is None
        assert r["tflops"] > 0 and math.isclose(r["us_per_step"], r["ms_p50"] * 1e3 / 3)


def test_ratio_is_relative_to_the_cudnn_row(monkeypatch):
    """A provider named cudnn runs first whatever its place in the list; every row of its group gets the ratio."""
    monkeypatch.setitem(PROVIDERS, "cudnn", Provider("cudnn", PROVIDERS["loop"].build))
    rows = _run([(SMOKE_CASE, "fp32")], ["loop", "cudnn"], ["fwd"]).rows
    assert [r["provider"] for r in rows] == ["cudnn", "loop"]
    base = rows[0]["ms_p50"]
    assert [r["ratio_vs_cudnn"] for r in rows] == [r["ms_p50"] / base for r in rows]


def test_deadline_stops_starting_rows():
    pairs = [(SMOKE_CASE, "fp32"), (Case("custom", "gru", B=2, T=3, H=8, I=8), "fp32")]
    outcome = _run(pairs, ["loop"], max_seconds=0)
    assert outcome.rows == [] and outcome.stopped_by_deadline and outcome.not_started == 4
    outcome = _run(pairs, ["loop"])
    assert len(outcome.rows) == 4 and not outcome.stopped_by_deadline and outcome.not_started == 0


def test_rows_already_done_are_skipped_and_a_hung_provider_is_not_run_again():
    env = {"device": CPU_DEVICE_LABEL}
    done = [make_row(SMOKE_CASE, "fp32", "fwd", "loop", env, ms_p50=1.0),
            make_row(SMOKE_CASE, "fp32", "fwd", "fastrnn:torch", env, status="timeout", note="hung")]
    rows = _run([(SMOKE_CASE, "fp32")], ["loop", "fastrnn:torch"], done=done).rows
    got = {(r["mode"], r["provider"]): r["status"] for r in rows}
    assert got == {("fwd+bwd", "loop"): "ok", ("fwd+bwd", "fastrnn:torch"): "skipped"}
    assert "hung" in rows[-1]["note"]


def test_jobs_keep_their_own_providers():
    jobs = [Job(SMOKE_CASE, "fp32", ("loop",)), Job(SMOKE_CASE, "bf16", ("fastrnn:torch",))]
    rows = run.run_plan(jobs, ["fwd"], "cpu", warmup=0, rep=1).rows
    assert [(r["dtype"], r["provider"], r["status"]) for r in rows] == [("fp32", "loop", "ok"),
                                                                        ("bf16", "fastrnn:torch", "ok")]


# -- command line -------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
@pytest.mark.parametrize("argv", [[], ["--device", "cuda"], ["--grid", "packed"], ["--first-contact"]])
def test_no_cuda_exits_2_with_a_message(capsys, argv):
    assert cli.main(_parse(argv)) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err


def test_cli_usage_errors_exit_2(capsys):
    assert cli.main(_parse(["--device", "cpu"])) == 2  # the grid is GPU-sized: a CPU run needs --shape
    assert "--shape" in capsys.readouterr().err
    assert cli.main(_parse(["--device", "cpu", "--shape", "2,3"])) == 2
    assert cli.main(_parse(["--device", "cpu", "--shape", "2,3,8", "--providers", "nope"])) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(_parse(["--list", "--first-contact", "--grid", "packed"])) == 2
    assert "exclusive" in capsys.readouterr().err


def test_cli_list_prints_the_plan_without_a_gpu(capsys):
    assert cli.main(_parse(["--list", "--first-contact"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("flashrnn-shape-lstm-B16-T1024-H768-I768 fp16: cudnn, fastrnn:tiled, fastrnn:persistent")
    n_rows = len(grid.select_grid()) * len(providers.default_providers("cuda")) * 2
    assert out[-1].endswith(f": {n_rows} rows")


def test_cli_cpu_smoke_run_writes_files_only_with_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--device", "cpu", "--shape", "2,3,8", "--providers", "fastrnn:reference,loop", "--modes", "fwd",
            "--warmup", "0", "--rep", "1"]
    assert cli.main(_parse(argv)) == 0
    assert not any(tmp_path.iterdir())
    out = tmp_path / "out"
    assert cli.main(_parse([*argv, "--out", str(out)])) == 0
    captured = capsys.readouterr()
    assert "CPU SMOKE RUN" in captured.err and "| loop |" in captured.out
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".md", ".png"]


def test_help_documents_every_option():
    parser = argparse.ArgumentParser(prog="python -m bench")
    cli.add_arguments(parser)
    text = parser.format_help()
    for action in parser._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in text


def test_fastrnn_bench_is_an_alias_of_the_checkout_harness(capsys):
    """``fastrnn bench`` (fastrnn/apps/cli.py) runs bench.cli: same exit status and message."""
    from fastrnn.apps import bench as alias
    from fastrnn.apps import cli as app_cli

    assert alias.main is cli.main and alias.add_arguments is cli.add_arguments
    if torch.cuda.is_available():
        pytest.skip("checks the no-CUDA path")
    assert app_cli.main(["bench"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_the_alias_outside_a_checkout_raises_import_error_with_a_hint(tmp_path):
    """Installed without the source tree, fastrnn/apps/bench.py finds no bench/ beside it: one clear ImportError
    (which ``fastrnn bench`` prints as one line, see tests/test_app_cli.py)."""
    import importlib.util

    from fastrnn.apps import bench as alias

    copy = tmp_path / "site" / "fastrnn" / "apps" / "bench.py"
    copy.parent.mkdir(parents=True)
    copy.write_text(Path(alias.__file__).read_text())
    spec = importlib.util.spec_from_file_location("_alias_copy", copy)
    with pytest.raises(ImportError, match="python -m bench"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
