"""The benchmark harness (fastrnn/apps/bench.py) on the CPU: grid data, row format, files, the correctness gate, CLI.

Nothing here times anything meaningful: CPU smoke runs only check the plumbing (tiny shapes, ~ms timers).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

import pytest
import torch

from fastrnn.apps import bench

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "shared" / "BENCHMARKS.md"

#: the standard grid as BENCHMARKS.md states it: name -> (cell, [(B, T, H)], dtypes, layers, bidir, packed)
EXPECTED = {
    "fastrnns-default": ("lstm", [(64, 100, 512)], {"fp32"}, 1, False, None),
    "flashrnn-shape": ("lstm", [(16, 1024, 768)], {"fp16", "bf16"}, 1, False, None),
    "small-batch": ("lstm", [(b, 1024, h) for b in (1, 4, 8) for h in (256, 512, 1024)], {"bf16", "fp32"}, 1, False,
                    None),
    "large-batch": ("lstm", [(256, 256, 1024)], {"bf16"}, 1, False, None),
    "packed": ("lstm", [(32, 1000, 512)], {"fp32"}, 1, False, (500, 1000)),
    "deep/bidir": ("lstm", [(32, 256, 512)], {"bf16"}, 2, True, None),
}

SMOKE_CASE = bench.Case("custom", "lstm", B=2, T=3, H=8, I=8)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes on a shared CPU: one intra-op thread avoids thread spin-up dominating (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="fastrnn bench")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


# -- grid ---------------------------------------------------------------------------------------------------
def test_grid_matches_the_protocol():
    by_name = {}
    for case in bench.GRID:
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


@pytest.mark.skipif(not BENCHMARKS_MD.exists(), reason="shared/BENCHMARKS.md is not beside the repository")
def test_grid_matches_benchmarks_md_table():
    """Every row of the protocol's grid table is in GRID with its B, T, H and dtypes (read from the file)."""
    text = BENCHMARKS_MD.read_text()
    table = text[text.index("## The standard grid"):].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("|") and not line.startswith("|---") and not line.startswith("| name")]
    assert len(rows) >= 7
    names = set(bench.GRID_NAMES)
    for name, B, T, H, dtypes, _why in rows:
        if name.startswith("gru"):
            assert {"gru", "rnn_tanh"} <= names
            continue
        assert name in names, name
        cases = [c for c in bench.GRID if c.bench == name]
        ints = lambda s: [int(v) for v in re.findall(r"\d+", s)]  # noqa: E731
        assert {c.B for c in cases} == set(ints(B)), name
        assert {c.T for c in cases} == {ints(T)[0]}, name
        want_h = {ints(H)[0]} if "layers" in H else set(ints(H))  # "512, 2 layers, bidirectional"
        assert {c.H for c in cases} == want_h, name
        want_dtypes = set(re.findall(r"fp16|bf16|fp32", dtypes))
        assert all(set(c.dtypes) == want_dtypes for c in cases), name


def test_select_grid_filters_and_rejects_unknown_names():
    pairs = bench.select_grid(["small-batch"], dtypes=["bf16"])
    assert len(pairs) == 9 and all(dt == "bf16" and c.bench == "small-batch" for c, dt in pairs)
    assert {c.bench for c, _ in bench.select_grid(["deep-bidir"])} == {"deep/bidir"}
    assert {c.cell for c, _ in bench.select_grid(cells=["gru"])} == {"gru"}
    with pytest.raises(ValueError, match="nope"):
        bench.select_grid(["nope"])


def test_flop_convention():
    case = bench.Case("x", "lstm", B=2, T=3, H=4, I=5)
    fwd = 2 * 2 * 3 * 16 * (4 + 5)  # 2*B*T*G*(H + I), G = 4H
    assert bench.flops(case, "fwd") == fwd
    assert bench.flops(case, "fwd+bwd") == 3 * fwd
    deep = bench.Case("x", "gru", B=1, T=1, H=4, I=5, layers=2, bidir=True)
    assert bench.flops(deep, "fwd") == 2 * (2 * 12 * (4 + 5)) + 2 * (2 * 12 * (4 + 8))
    assert bench.flops(case, "fwd", tokens=5) == 2 * 5 * 16 * 9  # packed: valid tokens instead of B*T


# -- a CPU smoke run ----------------------------------------------------------------------------------------
def test_smoke_run_rows(tmp_path):
    rows, skips = bench.run([(SMOKE_CASE, "fp32")], ["fastrnn:reference", "loop", "cudnn"], bench.MODES, "cpu",
                            warmup=0, rep=2)
    assert [(r["mode"], r["provider"]) for r in rows] == [
        (m, p) for m in bench.MODES for p in ("fastrnn:reference", "loop")]
    assert {(s.mode, s.provider) for s in skips} == {(m, "cudnn") for m in bench.MODES}
    assert not any(s.wrong for s in skips)
    for r in rows:
        assert tuple(r) == bench.COLUMNS
        assert 0 < r["ms_p20"] <= r["ms_p50"] <= r["ms_p80"]
        assert r["ratio_vs_cudnn"] is None and r["peak_mb"] is None
        assert r["tflops"] > 0 and math.isclose(r["us_per_step"], r["ms_p50"] * 1e3 / 3)
        assert (r["B"], r["T"], r["H"], r["I"], r["layers"], r["bidir"]) == (2, 3, 8, 8, 1, False)
        assert r["device"] == bench.CPU_DEVICE_LABEL and r["torch"] == torch.__version__ and r["fastrnn_commit"]

    path = bench.result_path(tmp_path, rows[0]["device"], rows[0]["date"])
    bench.write_csv(rows, path)
    bench.plot(rows, path.with_suffix(".png"))
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == bench.COLUMNS
        body = list(reader)
    assert len(body) == len(rows)
    ratio = bench.COLUMNS.index("ratio_vs_cudnn")
    assert all(line[ratio] == "" for line in body)
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench.result_path(tmp_path, rows[0]["device"], rows[0]["date"]).name == path.stem + "-2.csv"
    assert "fastrnn:reference" in bench.format_table(rows)


def test_ratio_is_relative_to_the_cudnn_row(monkeypatch):
    """With a provider named cudnn in the run, every row of the group carries ms_p50 / cudnn's ms_p50."""
    monkeypatch.setitem(bench.PROVIDERS, "cudnn", bench.Provider("cudnn", bench.PROVIDERS["loop"].build))
    rows, _ = bench.run([(SMOKE_CASE, "fp32")], ["loop", "cudnn"], ["fwd"], "cpu", warmup=0, rep=1)
    base = next(r["ms_p50"] for r in rows if r["provider"] == "cudnn")
    assert [r["ratio_vs_cudnn"] for r in rows] == [r["ms_p50"] / base for r in rows]


def test_packed_and_stacked_cases_pass_the_check():
    """The loop provider's PackedSequence masking and layer/direction stacking agree with torch.nn."""
    cases = [(bench.Case("t", "lstm", B=3, T=4, H=8, I=6, lengths=(2, 4)), "fp32"),
             (bench.Case("t", "gru", B=2, T=3, H=8, I=6, layers=2, bidir=True), "bf16")]
    rows, skips = bench.run(cases, ["loop", "fastrnn:reference"], bench.MODES, "cpu", warmup=0, rep=1)
    assert not skips and len(rows) == 8


# -- the correctness gate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("broken", ["output", "grad"])
def test_wrong_provider_is_never_timed(monkeypatch, broken):
    calls = {"n": 0}

    def build(problem, variant):
        runner = bench.build_runner("loop", problem)
        inner = runner.forward

        def forward():
            calls["n"] += 1
            out, states = inner()
            if broken == "output":
                return out * 1.01 + 0.01, states
            return out + 0.5 * (out - out.detach()), states  # right values, gradient scaled by 1.5

        return bench.Runner(forward, runner.params, runner.context)

    monkeypatch.setitem(bench.PROVIDERS, "broken", bench.Provider("broken", build, default=False))
    rows, skips = bench.run([(SMOKE_CASE, "fp32")], ["loop", "broken"], bench.MODES, "cpu", warmup=0, rep=1)
    wrong = [s for s in skips if s.wrong]
    timed = {(r["mode"], r["provider"]) for r in rows}
    if broken == "output":
        assert timed == {("fwd", "loop"), ("fwd+bwd", "loop")}
        assert {s.mode for s in wrong} == set(bench.MODES)
        assert calls["n"] == 2  # one checking call per mode, no timing calls
        assert "output" in wrong[0].reason
    else:
        assert ("fwd", "broken") in timed and ("fwd+bwd", "broken") not in timed
        assert [s.mode for s in wrong] == ["fwd+bwd"] and "grad:" in wrong[0].reason


def test_check_passes_the_real_providers():
    problem = bench.Problem(SMOKE_CASE, "fp32", "cpu")
    for spec in ("fastrnn:reference", "fastrnn:torch", "loop"):
        for mode in bench.MODES:
            assert bench.check(bench.build_runner(spec, problem), problem, mode) is None, (spec, mode)


# -- command line -------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
@pytest.mark.parametrize("argv", [[], ["--device", "cuda"], ["--grid", "packed"]])
def test_no_cuda_exits_2_with_a_message(capsys, argv):
    assert bench.main(_parse(argv)) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err


def test_cli_usage_errors_exit_2(capsys):
    assert bench.main(_parse(["--device", "cpu"])) == 2  # the grid is GPU-sized: a CPU run needs --shape
    assert "--shape" in capsys.readouterr().err
    assert bench.main(_parse(["--device", "cpu", "--shape", "2,3"])) == 2
    assert bench.main(_parse(["--device", "cpu", "--shape", "2,3,8", "--providers", "nope"])) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_cpu_smoke_run_writes_files_only_with_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--device", "cpu", "--shape", "2,3,8", "--providers", "fastrnn:reference,loop", "--modes", "fwd",
            "--warmup", "0", "--rep", "1"]
    assert bench.main(_parse(argv)) == 0
    assert not (tmp_path / "bench").exists()
    out = tmp_path / "out"
    assert bench.main(_parse([*argv, "--out", str(out)])) == 0
    captured = capsys.readouterr()
    assert "CPU SMOKE RUN" in captured.err and "loop" in captured.out
    assert sorted(p.suffix for p in out.iterdir()) == [".csv", ".png"]


def test_help_documents_every_option():
    parser = argparse.ArgumentParser(prog="fastrnn bench")
    bench.add_arguments(parser)
    text = parser.format_help()
    for option in ("--grid", "--providers", "--compile", "--modes", "--dtypes", "--cells", "--shape", "--out",
                   "--device",
                   "--warmup", "--rep", "--no-plot"):
        assert option in text
    for action in parser._actions:
        assert action.help, action.option_strings


def test_fastrnn_cli_bench_subcommand(capsys):
    """Through the app's `fastrnn bench` (fastrnn/apps/cli.py, when present): same exit status and message."""
    cli = pytest.importorskip("fastrnn.apps.cli")
    if torch.cuda.is_available():
        pytest.skip("checks the no-CUDA path")
    with pytest.raises(SystemExit) as exc:
        code = cli.main(["bench"])
        raise SystemExit(code)
    assert exc.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
