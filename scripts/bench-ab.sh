#!/usr/bin/env bash
# A/B of two signer builds on the same machine in the same minutes: one OpenBao, both signers
# running side by side, rounds alternating A, B, A, B, ... at c=32 (20,000 new identities
# each), so the machine's drift (its speed moves by ~1.5x between hours) falls on both alike.
# Per run: the signer's process CPU per request (/proc), its mandatory checks' CPU per request
# (its own istio_vault_ca_check_cpu_seconds, same requests) and process / checks, the kernel's
# share of the process CPU (/proc utime and stime); then the
# means and B / A. Release builds; logs and reports in target/bench-ab/.
#   A=old-binary B=new-binary scripts/bench-ab.sh
#   ROUNDS=4 N=20000 PIN=1 A=... B=... scripts/bench-ab.sh   # PIN=1: OpenBao on CPU 0,
#                                   # signers and load generator on CPU 1 (as in bench.sh)
# One build, two settings: A=B=binary with LOG_LEVEL_A / LOG_LEVEL_B (log.level, default info),
# CONFIG_A / CONFIG_B (TOML sections appended to that signer's config), WORKERS_A / WORKERS_B
# (server.workers, the serving threads) and THREADS_A / THREADS_B (TOKIO_WORKER_THREADS: the
# shared runtime, which served the connections before serving threads existed).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${A:?A=path of the first signer binary}" "${B:?B=path of the second signer binary}"
out=$PWD/target/bench-ab
rm -rf "$out" && mkdir -p "$out"
BAO=$(scripts/ensure-openbao.sh)
. scripts/lib.sh
bin=$(realpath "$A") # dev-issuer and loadgen come from A
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
n=${N:-20000}
rounds=${ROUNDS:-3}
# PIN=alone: the signers alone on CPU 1, OpenBao and the load generator on CPU 0 (the signer
# with a core of its own, as in a cluster where Vault and the callers run elsewhere).
case "${PIN:-}" in
  "") vault_cpu=(); signer_cpu=(); load_cpu=() ;;
  alone) vault_cpu=(taskset -c 0); signer_cpu=(taskset -c 1); load_cpu=(taskset -c 0) ;;
  *) vault_cpu=(taskset -c 0); signer_cpu=(taskset -c 1); load_cpu=(taskset -c 1) ;;
esac
start_openbao "$out" "${vault_cpu[@]}"

start_signer() { # name binary log-level more-config threads workers
  local port admin
  port=$(free_port); admin=$(free_port)
  mkdir -p "$out/$1"
  LOG_LEVEL=$3 signer_config "$out/$1" "$port" "$admin" "$LOADGEN_LIMITS" "$4"
  sed -i "s#$out/$1/tls#$out/tls#g; s#$out/$1/jwt#$out/jwt#g; s#$out/$1/vault-token#$out/vault-token#g" "$out/$1/config.toml"
  "${signer_cpu[@]}" env ${5:+TOKIO_WORKER_THREADS=$5} ${6:+IVCA_SERVER__WORKERS=$6} "$(realpath "$2")" serve --config "$out/$1/config.toml" >"$out/$1/signer.log" 2>&1 &
  pids+=($!)
  eval "${1}_pid=$!; ${1}_port=$port; ${1}_admin=$admin"
  wait_http "http://127.0.0.1:$admin/readyz"
}
start_signer a "$A" "${LOG_LEVEL_A:-info}" "${CONFIG_A:-}" "${THREADS_A:-}" "${WORKERS_A:-}"
start_signer b "$B" "${LOG_LEVEL_B:-info}" "${CONFIG_B:-}" "${THREADS_B:-}" "${WORKERS_B:-}"

run() { # name round requests
  local port pid admin
  eval "port=\$${1}_port; pid=\$${1}_pid; admin=\$${1}_admin"
  echo "bench-ab: $1, round $2: $3 requests at c=32" >&2
  python3 -c "import urllib.request,sys; open(sys.argv[1],'wb').write(urllib.request.urlopen(sys.argv[2]).read())" \
    "$out/$1-$2.before" "http://127.0.0.1:$admin/metrics"
  cut -d' ' -f14,15 "/proc/$pid/stat" >"$out/$1-$2.ticks-before"
  "${load_cpu[@]}" "$bin" loadgen --addr "127.0.0.1:$port" --ca-file "$out/tls/root-cert.pem" --server-name localhost \
    --jwt-key "$out/jwt/jwt-key.pem" --identities "$3" --requests "$3" --concurrency 32 \
    --progress 0s --vault-pid "$bao_pid" --rss-pid "$pid" --json "$out/$1-$2.json" >/dev/null 2>"$out/$1-$2.log"
  python3 -c "import urllib.request,sys; open(sys.argv[1],'wb').write(urllib.request.urlopen(sys.argv[2]).read())" \
    "$out/$1-$2.after" "http://127.0.0.1:$admin/metrics"
  cut -d' ' -f14,15 "/proc/$pid/stat" >"$out/$1-$2.ticks-after"
}
# Warm both (connection pools, the path cache, OpenBao's first requests).
run a warm 1000; run b warm 1000
for r in $(seq 1 "$rounds"); do run a "$r" "$n"; run b "$r" "$n"; done
python3 - "$out" "$rounds" <<'PY'
import json, re, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def checks(path):
    total = 0.0
    for line in open(path):
        m = re.match(r'istio_vault_ca_check_cpu_seconds_sum\{check="\w+"\}\s+(\S+)', line)
        if m:
            total += float(m.group(1))
    return total
rows = {}
def kernel_share(m, r):
    (u0, s0), (u1, s1) = ([int(v) for v in open(f"{out}/{m}-{r}.ticks-{w}").read().split()] for w in ("before", "after"))
    return (s1 - s0) / max(1, (u1 - u0) + (s1 - s0))
print("| run | requests | errors | throughput/s | process µs/req | of which kernel | checks µs/req | process / checks |")
print("|---|---|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    for m in ("a", "b"):
        x = json.load(open(f"{out}/{m}-{r}.json"))
        n = x["requests"]
        proc = x.get("cpu_us_per_request") or 0
        chk = (checks(f"{out}/{m}-{r}.after") - checks(f"{out}/{m}-{r}.before")) / n * 1e6
        rows.setdefault(m, []).append((proc, chk, x["throughput_per_s"]))
        print(f"| {m.upper()} round {r} | {n} | {sum(x['errors'].values())} | {x['throughput_per_s']:.0f} | {proc:.0f} | {kernel_share(m, r):.0%} | {chk:.0f} | {proc / chk:.2f}x |")
mean = lambda m, i: sum(row[i] for row in rows[m]) / rounds
for m in ("a", "b"):
    print(f"\n{m.upper()}: process {mean(m, 0):.0f} µs/req, checks {mean(m, 1):.0f} µs/req, process / checks {mean(m, 0) / mean(m, 1):.2f}x", end="")
print(f"\n\nB / A: process CPU per request {mean('b', 0) / mean('a', 0):.3f}, checks {mean('b', 1) / mean('a', 1):.3f}, throughput {mean('b', 2) / mean('a', 2):.3f}")
PY
