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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=(); cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }; trap cleanup EXIT
bao_port=$(free_port)
"$BAO" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bao_port" -dev-no-store-token >"$out/openbao.log" 2>&1 &
bao_pid=$!; pids+=($bao_pid)
python3 -c "import time,urllib.request
for _ in range(100):
    try: urllib.request.urlopen(\"http://127.0.0.1:$bao_port/v1/sys/health\", timeout=1); break
    except Exception: time.sleep(0.1)"
python3 deploy/vault/setup.py --addr "http://127.0.0.1:$bao_port" --token root --token-file "$out/vault-token" --serving-cert-dir "$out/tls" 2>/dev/null
"$bin" dev-issuer init --dir "$out/jwt" 2>/dev/null
for qa in true false; do
  port=$(free_port); admin=$(free_port)
  cat >"$out/config.toml" <<EOT
[server]
listen = "127.0.0.1:$port"
cert_file = "$out/tls/tls.crt"
key_file = "$out/tls/tls.key"
tcp_quickack = $qa
[auth.jwt]
jwks_file = "$out/jwt/jwks.json"
[vault]
addr = "http://127.0.0.1:$bao_port"
token_file = "$out/vault-token"
[admin]
listen = "127.0.0.1:$admin"
[audit]
enabled = false
[log]
level = "warn"
EOT
  "$bin" serve --config "$out/config.toml" 2>"$out/signer-$qa.log" & spid=$!; pids+=($spid)
  python3 -c "import time,urllib.request
for _ in range(100):
    try: urllib.request.urlopen(\"http://127.0.0.1:$admin/readyz\", timeout=1); break
    except Exception: time.sleep(0.1)"
  for nagle in "" "--client-nagle"; do
    "$bin" loadgen --jwt-key "$out/jwt/jwt-key.pem" --vault-addr "http://127.0.0.1:$bao_port" \
      --vault-token-file "$out/vault-token" --addr "127.0.0.1:$port" --server-name localhost \
      --ca-file "$out/tls/root-cert.pem" --progress 0s --identities 100 --concurrency 1 --connections 1 \
      --rsa-fraction 0 $nagle --json "$out/qa-$qa${nagle:+-nagle}.json" >/dev/null 2>&1
    python3 -c "import json,sys; x=json.load(open(sys.argv[1])); print(sys.argv[2], 'p50 %.2f ms p99 %.2f ms, %.0f req/s, errors %s' % (x['p50_ms'], x['p99_ms'], x['throughput_per_s'], x['errors']))" "$out/qa-$qa${nagle:+-nagle}.json" "server.tcp_quickack=$qa, client $([ -n "$nagle" ] && echo 'with Nagle' || echo 'TCP_NODELAY'):"
  done
  kill $spid; wait $spid 2>/dev/null || true
done
