"""Results as they come: the append-and-flush CSV writer, a harness killed mid-grid, the row watchdog, --resume,
and rebuilding the plot and table from a CSV (``--report``)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cli, report
from bench.grid import Case
from bench.results import COLUMNS, CSV_COLUMNS, RowWriter, make_row, read_rows, result_path

ROOT = Path(__file__).resolve().parents[1]
CASE = Case("custom", "lstm", B=2, T=6, H=16, I=16)
ENV = {"device": "cpu (smoke run, perf_counter timer, not a benchmark)", "torch": "t", "triton": "tr", "cuda": "",
       "fastrnn_commit": "abc", "date": "2026-01-02T03:04:05Z"}
PNG = b"\x89PNG\r\n\x1a\n"


def _harness(argv: list[str], **kw) -> subprocess.Popen:
    """``python -m bench ARGV`` from the repository root, as the GPU session runs it."""
    return subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the harness exited ({proc.returncode}) too early:\n{proc.stdout.read()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"nothing after {timeout} s:\n{proc.stdout.read()}")
        time.sleep(0.05)


def _data_rows(path: Path) -> list[str]:
    return path.read_text().splitlines()[1:]


# -- writer and reader --------------------------------------------------------------------------------------
def test_writer_appends_complete_rows_under_one_header(tmp_path):
    path = tmp_path / "r.csv"
    with RowWriter(path) as w:
        w.write(make_row(CASE, "fp32", "fwd", "loop", ENV, ms_p50=1.5, ms_p20=1.0, ms_p80=2.0))
        assert len(path.read_text().splitlines()) == 2  # on disk before the next row exists
        w.write(make_row(CASE, "fp32", "fwd", "flashrnn", ENV, status="skipped", note="not\ninstalled, here"))
    with RowWriter(path) as w:  # an existing file: appended to, no second header
        w.write(make_row(CASE, "fp32", "fwd+bwd", "loop", ENV, status="error", note='failed: "x", y'))
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS) and len(lines) == 4
    rows = read_rows(path)
    assert [(r["mode"], r["provider"], r["status"]) for r in rows] == [
        ("fwd", "loop", "ok"), ("fwd", "flashrnn", "skipped"), ("fwd+bwd", "loop", "error")]
    assert rows[0]["ms_p50"] == 1.5 and rows[0]["B"] == 2 and rows[0]["bidir"] is False
    assert rows[1]["ms_p50"] is None and rows[1]["note"] == "not installed, here"  # one line per row
    assert rows[2]["note"] == 'failed: "x", y'


def test_writer_refuses_a_file_of_other_columns(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        RowWriter(path)


def test_reader_takes_protocol_only_csvs_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "old.csv"
    row = make_row(CASE, "fp32", "fwd", "cudnn", ENV, ms_p50=2.0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        f.write("custom,lstm,2,6")  # a line cut short
    rows = read_rows(path)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["ms_p50"] == 2.0
    with pytest.raises(ValueError, match="not a result CSV"):
        (tmp_path / "bad.csv").write_text("x,y\n")
        read_rows(tmp_path / "bad.csv")


def test_result_path_never_overwrites_and_resume_takes_the_newest(tmp_path):
    first = result_path(tmp_path, "NVIDIA H200", "2026-01-02T03:04:05Z")
    assert first.name == "2026-01-02-nvidia-h200.csv"
    assert result_path(tmp_path, "NVIDIA H200", "2026-01-02", resume=True) == first  # nothing to resume yet
    first.write_text("")
    second = result_path(tmp_path, "NVIDIA H200", "2026-01-02")
    assert second.name == "2026-01-02-nvidia-h200-2.csv"
    second.write_text("")
    assert result_path(tmp_path, "NVIDIA H200", "2026-01-02", resume=True) == second
    assert result_path(tmp_path, ENV["device"], "2026-01-02").name == "2026-01-02-cpu-smoke.csv"


# -- a run killed mid-grid ----------------------------------------------------------------------------------
def test_a_killed_run_keeps_every_finished_row(tmp_path):
    """SIGKILL the harness once its first rows are on disk: the CSV holds its header and only complete rows."""
    cells, dtypes, specs = ["lstm", "gru", "rnn_tanh", "rnn_relu"], ["fp32", "bf16"], ["loop", "fastrnn:torch"]
    planned = len(cells) * len(dtypes) * 2 * len(specs)
    proc = _harness(["--device", "cpu", "--shape", "2,6,16", "--cells", ",".join(cells), "--dtypes",
                     ",".join(dtypes), "--providers", ",".join(specs), "--warmup", "0", "--rep", "150",
                     "--out", str(tmp_path)])
    try:
        _wait_for(lambda: any(len(_data_rows(p)) >= 2 for p in tmp_path.glob("*.csv")), proc)
    finally:
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    assert still_running, "the run finished before it could be killed mid-grid"
    (path,) = tmp_path.glob("*.csv")
    text = path.read_text()
    assert text.endswith("\n")  # no line cut short
    lines = list(csv.reader(text.splitlines()))
    assert tuple(lines[0]) == CSV_COLUMNS
    assert all(len(line) == len(CSV_COLUMNS) for line in lines[1:])
    rows = read_rows(path)
    assert 2 <= len(rows) == len(lines) - 1 < planned
    assert all(r["status"] == "ok" and r["ms_p50"] > 0 and r["date"] for r in rows)
    assert not path.with_suffix(".png").exists()  # killed before the end: the report is rebuilt from the CSV
    text, written = report.report(path)
    assert path.with_suffix(".png").read_bytes()[:8] == PNG and path.with_suffix(".md").read_text() == text
    assert f"{len(rows)} rows: {len(rows)} ok" in text


# -- the row watchdog and --resume --------------------------------------------------------------------------
_HANGING = """
import sys, time
from bench import providers
from bench.cli import cli

def build(problem, variant):
    runner = providers.build_runner("loop", problem)
    def forward():
        time.sleep(600)  # a kernel that never returns
    return providers.Runner(forward, runner.params)

providers.register_provider("hangs", default=False)(build)
sys.exit(cli(sys.argv[1:]))
"""


def test_watchdog_ends_a_hung_row_and_resume_goes_on(tmp_path, capsys):
    argv = ["--device", "cpu", "--shape", "2,6,16", "--modes", "fwd", "--cells", "lstm,gru", "--warmup", "0",
            "--rep", "1", "--out", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", _HANGING, *argv, "--providers", "loop,hangs", "--row-timeout", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "watchdog" in proc.stderr
    (path,) = tmp_path.glob("*.csv")
    rows = read_rows(path)
    assert [(r["cell"], r["provider"], r["status"]) for r in rows] == [("lstm", "loop", "ok"),
                                                                        ("lstm", "hangs", "timeout")]
    # the rerun appends to the same file and skips the rows already there
    assert cli.cli([*argv, "--providers", "loop,fastrnn:torch", "--resume"]) == 0
    capsys.readouterr()
    rows = read_rows(path)
    assert [(r["cell"], r["provider"], r["status"]) for r in rows][2:] == [
        ("lstm", "fastrnn:torch", "ok"), ("gru", "loop", "ok"), ("gru", "fastrnn:torch", "ok")]
    assert len(list(tmp_path.glob("*.csv"))) == 1


# -- --report -----------------------------------------------------------------------------------------------
def test_report_rebuilds_plot_and_table_from_any_csv(tmp_path, capsys):
    path = tmp_path / "2026-01-02-nvidia-h200.csv"
    env = {**ENV, "device": "NVIDIA H200"}
    with RowWriter(path) as w:
        w.write(make_row(CASE, "bf16", "fwd", "cudnn", env, ms_p50=2.0))
        w.write(make_row(CASE, "bf16", "fwd", "fastrnn:tiled", env, ms_p50=3.0))  # ratio left empty: filled in
        w.write(make_row(CASE, "bf16", "fwd", "fastrnn:persistent", env, status="wrong", note="x" * 300))
    assert cli.cli(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == path.with_suffix(".md").read_text() + "\n"
    assert "device NVIDIA H200" in out and "3 rows: 2 ok, 1 wrong" in out
    line = next(s for s in out.splitlines() if "| fastrnn:tiled |" in s)
    assert "| 1.50 |" in line  # 3.0 / 2.0
    assert "x" * 97 + "..." in out and "x" * 98 not in out
    assert path.with_suffix(".png").read_bytes()[:8] == PNG
    assert cli.cli(["--report", str(tmp_path / "missing.csv")]) == 2
    assert "--report" in capsys.readouterr().err


def test_report_of_an_empty_csv_still_writes_its_files(tmp_path):
    path = tmp_path / "empty.csv"
    RowWriter(path).close()
    text, written = report.report(path)
    assert "0 rows" in text and all(p.exists() for p in written)
    assert os.path.getsize(path.with_suffix(".png")) > 0
