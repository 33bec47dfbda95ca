"""bench/static_report.py: the compiled-code report runs without a GPU, writes the documented columns, labels
every figure an estimate and cites where each cuDNN figure comes from."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = (
    "bench", "cell", "B", "T", "H", "dtype", "pass", "strategy", "auto", "programs", "regs", "spill_bytes",
    "smem_bytes", "mma", "est_us_per_step", "cudnn_us_per_step", "est_ratio_vs_cudnn", "cudnn_source", "label",
    "tc_instr_per_warp", "smem_bytes_per_step", "global_bytes_per_step", "flag_waits_per_step",
)  # fmt: skip


def _report(tmp_path, *args):
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(ROOT / "bench" / "static_report.py"), "--out", str(tmp_path), *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("static-*.csv")
    return list(csv.DictReader(path.open()))


def test_the_headline_rows(tmp_path):
    rows = _report(tmp_path, "--grid", "flashrnn-shape", "--dtype", "fp16")
    assert len(rows) == 4  # fwd and fwd+bwd, tiled and persistent
    assert set(REQUIRED) <= set(rows[0])
    assert {r["strategy"] for r in rows if r["auto"] == "1"} == {"persistent"}
    for r in rows:
        assert r["label"].startswith("estimate")
        assert r["cudnn_source"].startswith("measured: FlashRNN")
        ratio = float(r["est_us_per_step"]) / float(r["cudnn_us_per_step"])
        assert abs(ratio - float(r["est_ratio_vs_cudnn"])) < 1e-2
        assert r["mma"].startswith("wgmma") or r["strategy"] == "tiled"
    persistent = {r["pass"]: r for r in rows if r["strategy"] == "persistent"}
    assert int(persistent["fwd"]["spill_bytes"]) == 0 and int(persistent["fwd"]["programs"]) == 48


def test_model_sources_are_labelled():
    from bench import static_report as R
    from bench.grid import GRID

    for case in GRID:
        for dtype in case.dtypes:
            for pass_ in R.PASSES:
                us, source = R.cudnn_us_per_step(case, dtype, pass_)
                assert us > 0 and source.split(":")[0] in ("measured", "model")
