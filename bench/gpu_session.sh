#!/usr/bin/env bash
# One call on a lent GPU machine (see shared/DEVICE.md): install, the whole test suite on CUDA (gpu-marked
# tests included), then the benchmark grid. Logs, the CSV and the plot land in $OUT; a short summary is
# printed last. Each stage has a time limit so a hung kernel cannot eat the session's device time.
#   OUT=/path FASTRNN_COMMIT=<sha> bash bench/gpu_session.sh
#   TEST_TIMEOUT=240 BENCH_TIMEOUT=300 BENCH_ARGS="--grid small-batch" bash bench/gpu_session.sh
set -u
OUT=${OUT:-/tmp/fastrnn-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || tail -n 20 "$OUT/install.log"
python3 -c "import torch, triton; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', \
triton.__version__, 'cuda', torch.version.cuda)" | tee "$OUT/versions.txt"

timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider tests/ ${TEST_ARGS:-} >"$OUT/pytest.log" 2>&1
echo "tests: exit $? ($(tail -n 1 "$OUT/pytest.log"))"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -n 20

timeout "${BENCH_TIMEOUT:-300}" python3 -m fastrnn.apps.bench --out "$OUT" ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
echo "bench: exit $?"
tail -n 60 "$OUT/bench.log"
