#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz (cmake --preset fuzz: clang, ASan + UBSan) for RUNS
# executions each, from its committed seed corpus and dictionary, and prints executions/s per
# target. Exits non-zero if any target crashes, leaks, times out or breaks one of its properties.
#   scripts/fuzz.sh              1,000,000 executions per target; on the 2-core development box
#                                (shared with other builds) the five took 9-10 minutes in all,
#                                1-3 minutes each (5,600-15,000 exec/s); the first build adds ~75 s
#   scripts/fuzz.sh 20000        a short run (`make fuzz-smoke`, part of `make test`)
#   SEED=7 scripts/fuzz.sh       another seed (default 1: the same inputs every time)
#   TARGETS="page webhook" scripts/fuzz.sh
#   MAX_LEN=65536 scripts/fuzz.sh  longer inputs (default 4096 bytes)
# The committed corpus is only read; inputs found in a run go to build/fuzz/corpus/<target>/.
# A failing input is saved as build/fuzz/artifacts/<target>-crash-<sha1> (or -leak-, -timeout-,
# -oom-); reproduce it with: build/fuzz/tests/fuzz/<target>_fuzz <that file>
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-1000000}
seed=${SEED:-1}
max_len=${MAX_LEN:-4096}
read -r -a targets <<< "${TARGETS:-link_header server_signals page webhook webhook_request sandbox_config url}"
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [RUNS]   (RUNS: a positive number of executions per target)" >&2
  exit 2
fi

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "${JOBS:-2}"

out=build/fuzz
mkdir -p "$out/artifacts" "$out/logs"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=()
printf '%-16s %10s %8s %8s %9s  %s\n' target executions seconds exec/s "new units" result
for t in "${targets[@]}"; do
  work="$out/corpus/$t"
  rm -rf "$work" && mkdir -p "$work"  # a fresh working corpus: a run depends only on seed and seeds
  log="$out/logs/$t.log"
  args=(-seed="$seed" -runs="$runs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-")
  [ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
  start=$(date +%s.%N)
  rc=0
  "$out/tests/fuzz/${t}_fuzz" "${args[@]}" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  new_units=$(sed -n 's/^stat::new_units_added: *//p' "$log")
  done_runs=${done_runs:-0}
  rate=$(awk -v n="$done_runs" -v s="$secs" 'BEGIN { printf "%d", (s > 0) ? n / s : 0 }')
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="FAILED (exit $rc, log $log)"
    failed+=("$t")
  fi
  printf '%-16s %10s %8s %8s %9s  %s\n' "$t" "$done_runs" "$secs" "$rate" "${new_units:-0}" "$result"
done

for t in "${failed[@]}"; do
  echo
  echo "== $t: the report (full log: $out/logs/$t.log)"
  grep -v -E '^#[0-9]+\s' "$out/logs/$t.log" | grep -A40 -m1 -E 'property violated|ERROR: |SUMMARY|deadly signal|Timeout' || tail -40 "$out/logs/$t.log"
done
echo "fuzz: $(( ${#targets[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
