#!/usr/bin/env bash
# Side-by-side benchmark: the same CSRs straight to Vault's sign endpoint and through the
# signer, on one machine, OpenBao on loopback (EC P-256 issuer, no_store). Release build.
# Writes JSON reports to target/bench/ and prints a summary. See docs/benchmarks.md.
#   scripts/bench.sh            # full run (c=1, c=32, 10k-identity storm at c=256)
#   QUICK=1 scripts/bench.sh    # short run
#   PIN=1 scripts/bench.sh      # Vault alone on CPU 0; signer and load generator on CPU 1
#                               # (both modes), as when Vault runs on its own node
#   VAULT_TLS=1 scripts/bench.sh  # HTTPS to OpenBao (HTTP/2 by ALPN), as Vault is reached in production
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/target/bench
rm -rf "$out" && mkdir -p "$out"
BAO=$(scripts/ensure-openbao.sh)
. scripts/lib.sh
# BIN=path: measure that build instead (an A/B comparison against an older commit's binary).
release_signer
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# PIN=1: pin Vault to CPU 0 and everything else to CPU 1, so the signer's CPU no longer comes
# out of Vault's; direct mode gets the same split (its load generator on CPU 1).
if [ -n "${PIN:-}" ]; then vault_cpu=(taskset -c 0); rest_cpu=(taskset -c 1); else vault_cpu=(); rest_cpu=(); fi
start_openbao "$out" "${vault_cpu[@]}"
signer_port=$(free_port)
admin_port=$(free_port)
LOG_LEVEL=${LOG_LEVEL:-info} signer_config "$out" "$signer_port" "$admin_port" "$LOADGEN_LIMITS"
# The signer's logs and audit lines (one per call) go to its log file, not the console.
echo "bench: OpenBao on $bao_addr, signer on 127.0.0.1:$signer_port; logs in $out/signer.log and $out/openbao.log" >&2
# SIGNER_WORKERS=n: server.workers (serving threads); SIGNER_THREADS=n: tokio's shared runtime
# (before serving threads existed it ran the connections too).
"${rest_cpu[@]}" env ${SIGNER_WORKERS:+IVCA_SERVER__WORKERS=$SIGNER_WORKERS} ${SIGNER_THREADS:+TOKIO_WORKER_THREADS=$SIGNER_THREADS} "$bin" serve --config "$out/config.toml" >"$out/signer.log" 2>&1 &
signer_pid=$!
pids+=($signer_pid)
python3 -c "import socket,time,sys
for _ in range(300):
    try: socket.create_connection(('127.0.0.1',$signer_port),1).close(); sys.exit(0)
    except OSError: time.sleep(0.1)
sys.exit('signer did not start')"

common=(--jwt-key "$out/jwt/jwt-key.pem" --vault-addr "$bao_addr" ${bao_ca:+--vault-ca-file "$bao_ca"}
  --vault-token-file "$out/vault-token" --addr "127.0.0.1:$signer_port" --server-name localhost
  --ca-file "$out/tls/root-cert.pem" --progress 0s --vault-pid "$bao_pid")
run() { # name, args...
  local name=$1; shift
  echo "== $name" >&2
  # PERF=<run name, e.g. c32-signer>: profile the signer during that run
  # (perf report -i target/bench/perf.data).
  if [ "${PERF:-}" = "$name" ]; then
    perf record -F ${PERF_FREQ:-4000} ${PERF_ARGS:-} -p "$signer_pid" -o "$out/perf.data" 2>/dev/null & perf_pid=$!; sleep 0.5
  fi
  "${rest_cpu[@]}" "$bin" loadgen "${common[@]}" --json "$out/$name.json" "$@"
  if [ "${PERF:-}" = "$name" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  # The signer's own view after each run (cumulative latency histograms, incl. the Vault call).
  python3 -c "import urllib.request,sys; open(sys.argv[1],'wb').write(urllib.request.urlopen(sys.argv[2]).read())" \
    "$out/metrics-$name.txt" "http://127.0.0.1:$admin_port/metrics"
}
if [ -n "${QUICK:-}" ]; then n1=300; n32=3000; storm=2000; else n1=2000; n32=20000; storm=10000; fi
# Warm both paths (connection pools, JIT-free but page cache and OpenBao's first requests).
run warmup-direct --direct-vault --identities 500 --concurrency 32 >/dev/null
run warmup-signer --identities 500 --concurrency 32 >/dev/null
run c1-direct --direct-vault --identities "$n1" --concurrency 1
run c1-signer --identities "$n1" --concurrency 1 --connections 1 --rss-pid "$signer_pid"
run c32-direct --direct-vault --identities "$n32" --concurrency 32
run c32-signer --identities "$n32" --concurrency 32 --rss-pid "$signer_pid"
run storm-direct --direct-vault --identities "$storm" --concurrency 256
run storm-signer --identities "$storm" --concurrency 256 --connections 8 --rss-pid "$signer_pid"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
r = {n: json.load(open(os.path.join(out, n + ".json"))) for n in
     ["c1-direct", "c1-signer", "c32-direct", "c32-signer", "storm-direct", "storm-signer"]}
def ratio(n):
    s, v = r[n].get("cpu_us_per_request"), r[n].get("vault_cpu_us_per_request")
    return f"{s / v:.2f}x" if s and v else "-"
# The headline (issue 12): the signer's CPU per request as a fraction of OpenBao's, same run,
# same CSRs; absolute microseconds vary with the machine, the ratio much less.
print(f"\nsigner CPU / OpenBao CPU per request: c=1 {ratio('c1-signer')}, c=32 {ratio('c32-signer')}, storm {ratio('storm-signer')}")
print("\n| run | requests | errors | throughput/s | p50 ms | p99 ms | max ms | seconds |")
print("|---|---|---|---|---|---|---|---|")
for n, x in r.items():
    errs = sum(x["errors"].values())
    print(f"| {n} | {x['requests']} | {errs} | {x['throughput_per_s']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['max_ms']:.2f} | {x['seconds']:.2f} |")
print()
print(f"c=32 signer/direct throughput: {r['c32-signer']['throughput_per_s'] / r['c32-direct']['throughput_per_s']:.1%} (target >= 90%)")
print(f"c=1 added median latency: {r['c1-signer']['p50_ms'] - r['c1-direct']['p50_ms']:.3f} ms (target <= 0.3 ms)")
print(f"storm time signer/direct: {r['storm-signer']['seconds'] / r['storm-direct']['seconds']:.2f}x (target <= 1.25x), errors {sum(r['storm-signer']['errors'].values())}")
print(f"signer peak RSS: {r['storm-signer']['peak_rss_mib']:.1f} MiB (target <= 64 MiB)")
print("\nCPU per request, µs (signer | Vault | load generator):")
for n, x in r.items():
    f = lambda v: "-" if v is None else f"{v:.0f}"
    print(f"  {n:13s} {f(x.get('cpu_us_per_request')):>5s} | {f(x.get('vault_cpu_us_per_request')):>5s} | {f(x.get('loadgen_cpu_us_per_request')):>5s}")
print(f"signer process CPU per request: {r['c32-signer']['cpu_us_per_request']:.0f} us at c=32, {r['storm-signer']['cpu_us_per_request']:.0f} us in the storm (TLS, gRPC, JWT, CSR, Vault client, leaf check, logging)")
# The signer's own time per call, from its /metrics before and after each signer run: the
# mean call (request_duration_seconds) minus the mean Vault sign call inside it. What it adds
# to a caller's latency, less noisy than the difference of two client-side medians.
import re
def sums(name):
    d = {}
    for line in open(os.path.join(out, f"metrics-{name}.txt")):
        m = re.match(r'istio_vault_ca_(request|vault_request)_duration_seconds_(sum|count)(\{op="sign"\})?\s+(\S+)', line)
        if m and (m.group(1) == "request" or m.group(3)):
            d[(m.group(1), m.group(2))] = float(m.group(4))
    return d
print("\nthe signer's own time per call (its metrics: call - Vault sign call), mean ms:")
for run, before in [("c1-signer", "c1-direct"), ("c32-signer", "c32-direct"), ("storm-signer", "storm-direct")]:
    a, b = sums(before), sums(run)
    n = b[("request", "count")] - a[("request", "count")]
    call = (b[("request", "sum")] - a[("request", "sum")]) / n * 1000
    sign = (b[("vault_request", "sum")] - a[("vault_request", "sum")]) / n * 1000
    print(f"  {run:13s} call {call:7.3f} | Vault sign {sign:7.3f} | own {call - sign:6.3f}")
# Issue 24: the signer's process CPU per request over what its mandatory checks cost, both from
# the same run: the process's CPU from /proc (the load generator's --rss-pid), the checks' from
# the signer's own istio_vault_ca_check_cpu_seconds (thread CPU time around each check).
def checks(name):
    d = {}
    for line in open(os.path.join(out, f"metrics-{name}.txt")):
        m = re.match(r'istio_vault_ca_check_cpu_seconds_(sum|count)\{check="(\w+)"\}\s+(\S+)', line)
        if m:
            d[(m.group(2), m.group(1))] = float(m.group(3))
    return d
print("\nsigner process CPU per request over its mandatory checks' CPU (same run), µs per request:")
print("| run | process | checks | token | csr | leaf | process / checks |")
print("|---|---|---|---|---|---|---|")
for run, before in [("c1-signer", "c1-direct"), ("c32-signer", "c32-direct"), ("storm-signer", "storm-direct")]:
    a, b = checks(before), checks(run)
    n = r[run]["requests"]
    per = {c: (b.get((c, "sum"), 0) - a.get((c, "sum"), 0)) / n * 1e6 for c in ("token", "csr", "leaf")}
    total = sum(per.values())
    proc = r[run].get("cpu_us_per_request")
    ratio = f"**{proc / total:.2f}x**" if proc and total else "-"
    print(f"| {run} | {proc:.0f} | {total:.0f} | {per['token']:.0f} | {per['csr']:.0f} | {per['leaf']:.0f} | {ratio} |")
PY
# Instruction counts of the handler alone (repeatable where the timings above are not).
# NO_INSTR=1 skips them (a profiling run, say).
if [ -n "${NO_INSTR:-}" ]; then
  echo "instruction counts skipped (NO_INSTR)" >&2
elif command -v valgrind >/dev/null; then
  scripts/instructions.sh
else
  echo "handler instruction counts skipped: valgrind is not installed" >&2
fi
