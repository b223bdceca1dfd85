#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECONDS each (default 60), starting from the
# committed seed corpora. New inputs go to target/fuzz-corpus/<target>; crashes to
# fuzz/artifacts/<target>. Needs a nightly toolchain (rustup's `nightly`) and cargo-fuzz,
# installed here from crates.io when missing.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 600 csr    # 10 minutes of the csr target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
sanitizer="${SANITIZER:-none}"  # SANITIZER=address for ASan (slower; aws-lc is C)
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(csr jwt identity leaf pods)
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain install nightly); skipping" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install cargo-fuzz@0.13.2)..." >&2
  cargo install --quiet --locked cargo-fuzz@0.13.2 >&2
fi
# One build of all targets; then each runs from a scratch copy of its corpus.
(cd fuzz && cargo +nightly fuzz build --release --sanitizer "$sanitizer" >&2)
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work"
  log="target/fuzz-corpus/$t.log"
  start=$(date +%s)
  rc=0
  (cd fuzz && cargo +nightly fuzz run --release --sanitizer "$sanitizer" "$t" "../$work" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1 || rc=$?
  runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo 0)
  echo "fuzz: $t ran $(( $(date +%s) - start ))s, $runs executions, corpus $(ls "$work" | wc -l) new inputs"
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t FAILED (input saved under fuzz/artifacts/$t)" >&2
    exit 1
  fi
done
