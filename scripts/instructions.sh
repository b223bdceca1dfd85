#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind (repeatable where timings are not):
#  1. the handler alone (authentication with an RS256 token, authorization, CSR policy and
#     self-signature, TTL, leaf verification and chain of a canned Vault answer; no network):
#     `HandlerFixture::handle_once` of benches/hot_path.rs, both client shapes;
#  2. the whole signer process (release binary, TLS, HTTP/2, Vault client, logging at info)
#     serving the load generator's mixed RSA/P-256 requests against a local OpenBao.
# Each figure is (count for many calls - count for few calls) / the difference, so start-up
# and first-call costs drop out. User-space instructions only: the kernel's share of the CPU
# (loopback TCP, epoll, futex) is in the CPU times of scripts/bench.sh.
#   scripts/instructions.sh            # both
#   PROCESS=0 scripts/instructions.sh  # the handler only
#   SHAPES= scripts/instructions.sh    # the process only
#   KEEP=dir scripts/instructions.sh   # and keep the callgrind profiles in dir
#   LOG_LEVEL=... scripts/instructions.sh  # the signer's log.level (default info)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
bench=$(cargo bench --locked --bench hot_path --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -n 1)
[ -x "$bench" ] || { echo "bench binary not found" >&2; exit 1; }
out=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  # KEEP=dir keeps the callgrind profiles (callgrind_annotate --inclusive=yes dir/cg.process.550).
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out"/cg.* "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
collected() { sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$1"; }

handler() { # shape calls -> instructions inside handle_once
  HANDLER_INSTRUCTIONS="$1:$2" valgrind --tool=callgrind --toggle-collect='*handle_once*' \
    --callgrind-out-file="$out/cg.$1.$2" "$bench" 2>"$out/vg.$1.$2"
  collected "$out/vg.$1.$2"
}
for shape in ${SHAPES-ztunnel agent}; do
  few=$(handler "$shape" 10)
  many=$(handler "$shape" 60)
  echo "handler instructions per request, $shape shape: $(( (many - few) / 50 ))"
done
[ "${PROCESS:-1}" = 0 ] && exit 0

. scripts/lib.sh
release_signer
BAO=$(scripts/ensure-openbao.sh)
start_openbao "$out"
process() { # requests -> instructions of the signer process over its whole life
  local n=$1 port admin
  port=$(free_port); admin=$(free_port)
  signer_config "$out" "$port" "$admin"
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.process.$n" "$bin" serve --config "$out/config.toml" \
    >/dev/null 2>"$out/vg.process.$n" &
  local pid=$!
  wait_http "http://127.0.0.1:$admin/readyz"
  signer_load "$out" "$port" "$n" 4 --connections 2
  kill -TERM "$pid"; wait "$pid" || true
  collected "$out/vg.process.$n"
}
few=$(process 50)
many=$(process 550)
echo "signer process instructions per request (mixed shapes, new identity each): $(( (many - few) / 500 ))"
