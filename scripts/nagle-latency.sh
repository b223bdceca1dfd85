#!/usr/bin/env bash
# Latency at c=1 of a client that leaves Nagle on (ztunnel's CA client writes each request in
# pieces without TCP_NODELAY) and of one that does not, against the signer with
# server.tcp_quickack on and off. Debug build, OpenBao dev on loopback; reports to
# target/nagle-latency/. See docs/benchmarks.md ("Clients with Nagle on").
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/target/nagle-latency; rm -rf "$out"; mkdir -p "$out"
BAO=$(scripts/ensure-openbao.sh)
cargo build --quiet --locked --bin istio-vault-ca
bin=$PWD/target/debug/istio-vault-ca
. scripts/lib.sh
pids=(); cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }; trap cleanup EXIT
start_openbao "$out"
for qa in true false; do
  port=$(free_port); admin=$(free_port)
  signer_config "$out" "$port" "$admin" "tcp_quickack = $qa" '[audit]
enabled = false
[log]
level = "warn"'
  "$bin" serve --config "$out/config.toml" >"$out/signer-$qa.log" 2>&1 & spid=$!; pids+=($spid)
  wait_http "http://127.0.0.1:$admin/readyz"
  for nagle in "" "--client-nagle"; do
    "$bin" loadgen --jwt-key "$out/jwt/jwt-key.pem" --vault-addr "$bao_addr" ${bao_ca:+--vault-ca-file "$bao_ca"} \
      --vault-token-file "$out/vault-token" --addr "127.0.0.1:$port" --server-name localhost \
      --ca-file "$out/tls/root-cert.pem" --progress 0s --identities 100 --concurrency 1 --connections 1 \
      --rsa-fraction 0 $nagle --json "$out/qa-$qa${nagle:+-nagle}.json" >/dev/null 2>&1
    python3 -c "import json,sys; x=json.load(open(sys.argv[1])); print(sys.argv[2], 'p50 %.2f ms p99 %.2f ms, %.0f req/s, errors %s' % (x['p50_ms'], x['p99_ms'], x['throughput_per_s'], x['errors']))" "$out/qa-$qa${nagle:+-nagle}.json" "server.tcp_quickack=$qa, client $([ -n "$nagle" ] && echo 'with Nagle' || echo 'TCP_NODELAY'):"
  done
  kill $spid; wait $spid 2>/dev/null || true
done
