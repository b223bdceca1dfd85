#!/usr/bin/env bash
# Instructions per request of the signer's handler (authentication with an RS256 token,
# authorization, CSR policy and self-signature, TTL, leaf verification and chain of a canned
# Vault answer; no network), counted by valgrind's callgrind around the never-inlined
# `handle_once` of benches/hot_path.rs. Counts are repeatable where timings are not: the
# figure is (instructions of 60 calls - instructions of 10 calls) / 50, so the first call's
# one-time costs drop out. Release build (the bench profile).
#   scripts/instructions.sh            # both shapes
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
bin=$(cargo bench --locked --bench hot_path --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "bench binary not found" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # shape calls -> instructions collected inside handle_once
  HANDLER_INSTRUCTIONS="$1:$2" valgrind --tool=callgrind --toggle-collect='*handle_once*' \
    --callgrind-out-file="$out/cg.$1.$2" "$bin" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for shape in ztunnel agent; do
  few=$(count "$shape" 10)
  many=$(count "$shape" 60)
  echo "handler instructions per request, $shape shape: $(( (many - few) / 50 ))"
done
