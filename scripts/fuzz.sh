#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/) for SECONDS each (default 60), starting from the
# committed seed corpora, on the stable toolchain: the targets are built with cargo and the
# same coverage instrumentation cargo-fuzz uses (`-Cpasses=sancov-module` and LLVM options,
# all stable flags), then run directly, two at a time (one per core). New inputs go to
# target/fuzz-corpus/<target>; a crash stops the run and is saved under fuzz/artifacts/.
#
#   scripts/fuzz.sh                  # 60 s per target
#   scripts/fuzz.sh 600 csr_der      # 10 minutes of one target
#   SANITIZER=address scripts/fuzz.sh   # ASan (needs -Zsanitizer: RUSTC_BOOTSTRAP is set)
#   JOBS=1 scripts/fuzz.sh           # one target at a time
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(csr csr_der jwt identity leaf pods review_prefilter routes sign_answers watched_pod)
jobs="${JOBS:-2}"
triple=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
if [ "${SANITIZER:-none}" != none ]; then
  flags+=" -Zsanitizer=${SANITIZER}"
  export RUSTC_BOOTSTRAP=1
fi
echo "fuzz: building ${#targets[@]} target(s) with $(rustc --version)" >&2
start=$(date +%s)
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
(cd fuzz && RUSTFLAGS="$flags" cargo build --locked --release --target "$triple" "${bins[@]}" >&2)
echo "fuzz: built in $(( $(date +%s) - start ))s" >&2
mkdir -p target/fuzz-corpus fuzz/artifacts

# One target: SECONDS of libFuzzer from its corpus; prints executions and coverage.
run() {
  local t=$1 work="target/fuzz-corpus/$1" log="target/fuzz-corpus/$1.log"
  mkdir -p "$work" "fuzz/artifacts/$t"
  local rc=0 began
  began=$(date +%s)
  "fuzz/target/$triple/release/$t" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" "$work" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  local runs cov
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+$' || echo '?')
  echo "fuzz: $t ran $(( $(date +%s) - began ))s, $runs executions, coverage $cov edges, $(ls "$work" | wc -l) new inputs"
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t FAILED (input saved under fuzz/artifacts/$t)" >&2
    return 1
  fi
}

failed=0
pids=()
for t in "${targets[@]}"; do
  run "$t" & pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit "$failed"
