#!/usr/bin/env bash
# System calls per request of the signer process (strace -c), the kernel side of its CPU that
# instruction counts (scripts/instructions.sh) do not see: loopback TCP sends and receives,
# log writes, epoll, futex wake-ups. Counts, unlike times, barely move between runs.
# Release build, local OpenBao set up like the quickstart, the load generator's mixed shapes.
#   scripts/syscalls.sh                 # 2,000 requests at c=32
#   N=500 C=1 scripts/syscalls.sh       # one connection, one call at a time
#   BIN=/path/to/istio-vault-ca scripts/syscalls.sh   # another build (an A/B comparison)
#   LOG_LEVEL='info,istio_vault_ca::request=off' scripts/syscalls.sh   # another log.level
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "strace is needed (apt-get install strace)" >&2; exit 2; }
n=${N:-2000}
c=${C:-32}
. scripts/lib.sh
release_signer
BAO=$(scripts/ensure-openbao.sh)
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT
start_openbao "$out"
port=$(free_port); admin=$(free_port)
signer_config "$out" "$port" "$admin" "$LOADGEN_LIMITS"
# Request log at info and the audit trail to stdout, as in production (to files here).
"$bin" serve --config "$out/config.toml" 2>"$out/signer.log" >"$out/audit.log" &
signer_pid=$!
pids+=("$signer_pid")
wait_http "http://127.0.0.1:$admin/readyz"
conns=()
[ "$c" = 1 ] && conns=(--connections 1)
load() { signer_load "$out" "$port" "$1" "$c" "${conns[@]}"; }
load 200 # warm: connections, caches, OpenBao's first requests
strace -c -f -p "$signer_pid" -o "$out/strace" 2>/dev/null &
strace_pid=$!
sleep 1
load "$n"
kill -INT "$strace_pid"; wait "$strace_pid" || true
python3 - "$out/strace" "$n" "$c" <<'PY'
import sys
path, n, c = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total", "restart_syscall"):
        calls = int(f[3])
        rows.append((calls, f[-1]))
rows.sort(reverse=True)
total = sum(calls for calls, _ in rows)
print(f"signer system calls per request ({n} requests at c={c}): {total / n:.2f}")
for calls, name in rows:
    if calls / n >= 0.01:
        print(f"  {name:14s} {calls / n:6.2f}")
PY
