"""bench/gpu_session.sh on the CPU: its dry run checks the imports and the install line and prints every stage's
command and limit, in the session's order, within the 7-minute window."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"
ORDER = ["setup", "smoke", "bench", "report", "gpu_tests", "summary"]


def _session(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT / "tests", env=env, capture_output=True, text=True,
                          timeout=600)


def test_dry_run_fits_the_window_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _session("--dry-run", out=out)
    text = proc.stdout
    assert proc.returncode == 0, text + proc.stderr
    assert not out.exists()
    for what in ("the install line", "harness and fastrnn import", "the first-contact plan", "the smoke collects",
                 "the gpu tests collect"):
        assert re.search(rf"^ok +{what}", text, re.M), what
    stages = re.findall(r"^== stage (\w+): limit (\d+) s", text, re.M)
    assert [name for name, _ in stages] == ORDER
    limits = {name: int(limit) for name, limit in stages}
    total = int(re.search(r"^total limit: (\d+) s$", text, re.M).group(1))
    assert total == sum(limits.values()) <= 420
    assert limits["smoke"] <= 90 and limits["gpu_tests"] > 0
    smoke = text.split("== stage smoke")[1].split("== stage")[0]
    assert "tests/test_gpu_smoke.py -x -rA" in smoke
    bench = text.split("== stage bench")[1].split("== stage")[0]
    assert "--first-contact" in bench and "--max-seconds" in bench and "--row-timeout" in bench
    assert "-m gpu" in text.split("== stage gpu_tests")[1]
    assert text.rstrip().endswith(f"total limit: {total} s")


def test_unknown_argument_is_a_usage_error(tmp_path):
    proc = _session("--nope", out=tmp_path)
    assert proc.returncode == 2 and "usage" in proc.stderr
