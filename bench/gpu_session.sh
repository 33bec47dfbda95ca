#!/usr/bin/env bash
# The one prepared call for a lent GPU machine: evidence within 7 minutes of command time. Every stage runs
# under `timeout` with its own limit, and every stage's files are written as it goes, so a stage cut short
# keeps what it finished:
#
#   stage      limit (s)  what                                                         files in $OUT
#   setup         40      install without network (else the source tree), device line  versions.txt
#   smoke         90      tests/test_gpu_smoke.py -x -rA: every cell, tiled and         smoke.log
#                         persistent, forward+backward vs fp64, small + headline shape
#   bench        200      python -m bench --first-contact: headline fp16/bf16, small   <date>-<device>.csv, bench.log
#                         batch, fastrnns default, large batch (cudnn + strategies),
#                         then the rest of the grid; each row appended when measured
#   report        20      python -m bench --report: plot and table from the CSV        <date>-<device>.png, .md
#   gpu_tests    >= 60    pytest -m gpu (except the smoke), whatever time is left      gpu_tests.log
#   summary       10      the short summary, printed last                              summary.txt
#
# Usage (run from anywhere; it works in the repository root):
#   OUT=/path FASTRNN_COMMIT=<git rev-parse --short HEAD> bash bench/gpu_session.sh
#   bash bench/gpu_session.sh --dry-run    # CPU: checks imports and the install line, prints every stage's
#                                          # command and limit and the total
# PYTHON picks the interpreter (default python3); ROW_TIMEOUT the bench's per-row watchdog (default 60 s);
# BENCH_PLAN replaces the bench stage's --first-contact (e.g. "--device cpu --shape 2,6,16" to try the flow on CPU).
set -u
cd "$(dirname "$0")/.." || exit 2

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_session.sh [--dry-run]" >&2; exit 2 ;;
esac

TOTAL_LIMIT=420
LIMIT_SETUP=40 LIMIT_SMOKE=90 LIMIT_BENCH=200 LIMIT_REPORT=20 LIMIT_SUMMARY=10
LIMIT_GPU_TESTS=$((TOTAL_LIMIT - LIMIT_SETUP - LIMIT_SMOKE - LIMIT_BENCH - LIMIT_REPORT - LIMIT_SUMMARY))
export PY=${PYTHON:-python3}
export OUT=${OUT:-/tmp/fastrnn-gpu}
export ROW_TIMEOUT=${ROW_TIMEOUT:-60}
export BENCH_PLAN=${BENCH_PLAN:---first-contact}  # e.g. "--device cpu --shape 2,6,16" to try the flow on a CPU
export FASTRNN_COMMIT=${FASTRNN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export PYTHONDONTWRITEBYTECODE=1

# --- the stages (each runs in its own bash under timeout; $1 is its limit) ------------------------------------
stage_setup() {
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . || echo "pip install failed (above)"
  if ! (cd / && "$PY" -c "import fastrnn.kernels") 2>/dev/null; then
    echo "fastrnn.kernels does not import from an install: running from the source tree (fastrnn/kernels -> ../kernels)"
    ln -sfn ../kernels fastrnn/kernels
  fi
  "$PY" -m bench --env
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  "$PY" -c 'import importlib.util as u; print("pytest plugins:", *(f"{m}={u.find_spec(m) is not None}" for m in ("xdist", "pytest_timeout", "pytest_benchmark")), "flashrnn:", u.find_spec("flashrnn") is not None)'
}

stage_smoke() {
  "$PY" -m pytest -p no:cacheprovider tests/test_gpu_smoke.py -x -rA -v $SMOKE_OPTS
}

stage_bench() {  # restarted with --resume after the row watchdog ends a hung row (exit 3), within the limit
  local end=$((SECONDS + $1 - 5)) tries=0 rc=0 left
  while left=$((end - SECONDS)); ((left > 30)); do
    timeout -k 5 "$left" "$PY" -m bench $BENCH_PLAN --out "$OUT" --resume --max-seconds $((left - 20)) \
      --row-timeout "$ROW_TIMEOUT"
    rc=$?
    tries=$((tries + 1))
    echo "bench: exit $rc (run $tries)"
    [[ $rc == 3 && $tries -lt 4 ]] || break
  done
  return "$rc"
}

stage_report() {
  local csv
  csv=$(ls -t "$OUT"/*.csv 2>/dev/null | head -n 1)
  [[ -n $csv ]] || { echo "report: no result CSV in $OUT"; return 1; }
  "$PY" -m bench --report "$csv" >/dev/null && \
    "$PY" -c 'import sys; from bench.report import brief; from bench.results import read_rows; print("\n".join(brief(read_rows(sys.argv[1]))))' "$csv"
}

stage_gpu_tests() {
  "$PY" -m pytest -p no:cacheprovider -m gpu tests/ --ignore=tests/test_gpu_smoke.py -rA -v $GPU_TEST_OPTS
}

stage_summary() {
  local log csv md
  pytest_outcome() {  # the final pytest line, or what the -v progress lines say of a run cut short
    local last
    last=$(grep -E "^=+ .* in [0-9.]+s" "$1" | tail -n 1)
    if [[ -n $last ]]; then echo "$last"; else
      echo "cut short: $(grep -cE ' PASSED( |$)|\] PASSED ' "$1") passed, $(grep -cE ' (FAILED|ERROR)( |$)|\] (FAILED|ERROR) ' "$1") failed so far"
    fi
    grep -E "^(FAILED|ERROR) " "$1" | head -n 8
  }
  echo "== fastrnn GPU session: $(date -u +%FT%TZ), commit $FASTRNN_COMMIT"
  grep -E "^(device|torch|fastrnn|pytest plugins)" "$OUT/versions.txt" 2>/dev/null || echo "(no versions.txt)"
  for log in smoke gpu_tests; do
    [[ -f $OUT/$log.log ]] && echo "$log: $(pytest_outcome "$OUT/$log.log")"
  done
  csv=$(ls -t "$OUT"/*.csv 2>/dev/null | head -n 1)
  md=${csv%.csv}.md
  if [[ -n $csv && -f $md ]]; then
    echo "bench: $(grep -E '^- [0-9]+ rows' "$md" | sed 's/^- //') in $(basename "$csv")"
    grep -E "^[a-z_/-]+ [a-z_]+ B[0-9]+ T[0-9]+ H[0-9]+.* (fwd|fwd\+bwd): " "$OUT/bench.log" | head -n 10  # first contact
  else
    echo "bench: no result table"
  fi
  echo "files: $(ls "$OUT" | wc -l) in $OUT (at most 8 come back): $(ls "$OUT" | tr '\n' ' ')"
}

STAGES=(setup smoke bench report gpu_tests summary)
declare -A LIMIT=([setup]=$LIMIT_SETUP [smoke]=$LIMIT_SMOKE [bench]=$LIMIT_BENCH [report]=$LIMIT_REPORT
                  [gpu_tests]=$LIMIT_GPU_TESTS [summary]=$LIMIT_SUMMARY)
declare -A LOG=([setup]=versions.txt [smoke]=smoke.log [bench]=bench.log [report]=bench.log
                [gpu_tests]=gpu_tests.log [summary]=summary.txt)

has_module() { "$PY" -c "import $1" 2>/dev/null; }
pytest_opts() {  # $1 workers, $2 per-test timeout: only the plugins that are installed
  local opts=""
  has_module xdist && opts="-n $1"  # cold Triton compiles are CPU-bound: 8 processes compile at once
  has_module pytest_timeout && opts="$opts --timeout $2 --timeout-method thread"  # thread: also ends a hung sync
  echo "$opts"
}
set_pytest_opts() { export SMOKE_OPTS="$(pytest_opts 8 60)" GPU_TEST_OPTS="$(pytest_opts 8 120)"; }

run_stage() {  # name limit: the stage's function in its own bash under timeout, output appended to its log
  local name=$1 limit=$2 t0=$SECONDS rc
  timeout -k 5 "$limit" bash -c "set -u; $(declare -f "stage_$name"); stage_$name $limit" >>"$OUT/${LOG[$name]}" 2>&1
  rc=$?
  local what="exit $rc"
  [[ $rc == 124 || $rc == 137 ]] && what="TIMED OUT (exit $rc)"
  printf '%-10s %s after %d s (limit %d s)\n' "$name" "$what" $((SECONDS - t0)) "$limit" >>"$OUT/summary.txt"
}

# --- dry run: on any machine, no GPU -----------------------------------------------------------------------
if ((DRY_RUN)); then
  set_pytest_opts
  fail=0
  check() {  # what, command...: run a check, print its last line
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then echo "ok    $what: $(echo "$out" | grep -v '^\s*$' | tail -n 1)"
    else echo "FAIL  $what:"; echo "$out" | tail -n 15 | sed 's/^/      /'; fail=1; fi
  }
  echo "== dry run on $(uname -m), $("$PY" --version 2>&1); OUT=$OUT; no GPU needed"
  check "the install line (pip --dry-run)" "$PY" -m pip install --dry-run --no-deps --no-build-isolation --no-index -e .
  check "harness and fastrnn import" "$PY" -m bench --env --device cpu
  check "the first-contact plan" "$PY" -m bench --first-contact --list
  check "the smoke collects" "$PY" -m pytest -p no:cacheprovider --collect-only -q tests/test_gpu_smoke.py
  check "the gpu tests collect" "$PY" -m pytest -p no:cacheprovider --collect-only -q -m gpu tests/ \
    --ignore=tests/test_gpu_smoke.py
  total=0
  for name in "${STAGES[@]}"; do
    limit=${LIMIT[$name]}
    total=$((total + limit))
    note=""
    [[ $name == gpu_tests ]] && note=" (at least; it gets whatever of the $TOTAL_LIMIT s the stages before leave)"
    echo "== stage $name: limit $limit s$note, output -> \$OUT/${LOG[$name]}"
    declare -f "stage_$name" | sed '1,2d;$d' | sed -e "s|\$SMOKE_OPTS|$SMOKE_OPTS|" -e "s|\$GPU_TEST_OPTS|$GPU_TEST_OPTS|" \
      -e "s|\$BENCH_PLAN|$BENCH_PLAN|" -e "s|\"\$ROW_TIMEOUT\"|$ROW_TIMEOUT|"
  done
  echo "pytest options here: smoke '${SMOKE_OPTS:-none}', gpu tests '${GPU_TEST_OPTS:-none}'" \
       "(with pytest-xdist and pytest-timeout, as on the GPU machine: -n 8, --timeout 60 / 120 --timeout-method thread)"
  echo "files in \$OUT: versions.txt smoke.log <date>-<device>.csv bench.log <date>-<device>.png <date>-<device>.md" \
       "gpu_tests.log summary.txt (8)"
  echo "total limit: $total s"
  ((total <= TOTAL_LIMIT)) || { echo "the stage limits exceed $TOTAL_LIMIT s"; fail=1; }
  exit $fail
fi

# --- the session -------------------------------------------------------------------------------------------
mkdir -p "$OUT"
: >"$OUT/summary.txt"  # one line per stage as it ends, then the summary stage's lines
run_stage setup "$LIMIT_SETUP"
set_pytest_opts
grep -E "^(device|torch|fastrnn) " "$OUT/versions.txt"
tail -n 1 "$OUT/summary.txt"
for name in smoke bench report; do
  run_stage "$name" "${LIMIT[$name]}"
  tail -n 1 "$OUT/summary.txt"
done
left=$((TOTAL_LIMIT - SECONDS - LIMIT_SUMMARY))
if ((left >= 15)); then run_stage gpu_tests "$left"; else echo "gpu_tests  not run: $left s left" >>"$OUT/summary.txt"; fi
tail -n 1 "$OUT/summary.txt"
run_stage summary "$LIMIT_SUMMARY"
echo
cat "$OUT/summary.txt"
