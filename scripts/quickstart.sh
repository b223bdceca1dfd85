#!/usr/bin/env bash
# Quickstart: one command, no Kubernetes. Installs OpenBao if missing, starts it on loopback,
# configures PKI with deploy/vault/setup.py, starts the signer, and issues one workload
# certificate through the bundled client (pilot-agent shape; pass `ztunnel` for the other).
# Everything is written under .quickstart/ and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-pilot-agent}
work=$PWD/.quickstart
rm -rf "$work" && mkdir -p "$work"

BAO=$(scripts/ensure-openbao.sh)
echo "== building istio-vault-ca (the first build takes a few minutes; cargo shows its progress)"
cargo build --locked --bin istio-vault-ca
bin=$PWD/target/debug/istio-vault-ca

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url, seconds
  python3 - "$1" "$2" <<'PY'
import sys, time, urllib.request
url, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        urllib.request.urlopen(url, timeout=1); sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(f"timed out waiting for {url}")
PY
}
wait_tcp() { # port, seconds
  python3 - "$1" "$2" <<'PY'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"timed out waiting for port {port}")
PY
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

bao_port=$(free_port)
root_token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
echo "== starting OpenBao ($("$BAO" version | head -1)) on 127.0.0.1:$bao_port"
"$BAO" server -dev -dev-root-token-id="$root_token" -dev-listen-address="127.0.0.1:$bao_port" \
  -dev-no-store-token >"$work/openbao.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$bao_port/v1/sys/health" 30

echo "== configuring PKI (deploy/vault/setup.py)"
python3 deploy/vault/setup.py --addr "http://127.0.0.1:$bao_port" --token "$root_token" \
  --token-file "$work/vault-token" --serving-cert-dir "$work/tls"

echo "== creating a development JWT issuer (stands in for the Kubernetes API server)"
"$bin" dev-issuer init --dir "$work/jwt"
"$bin" dev-issuer token --dir "$work/jwt" --namespace default --service-account demo >"$work/jwt/token"

signer_port=$(free_port)
admin_port=$(free_port)
cat >"$work/config.toml" <<EOF
trust_domain = "cluster.local"
[server]
listen = "127.0.0.1:$signer_port"
cert_file = "$work/tls/tls.crt"
key_file = "$work/tls/tls.key"
[auth.jwt]
jwks_file = "$work/jwt/jwks.json"
[vault]
addr = "http://127.0.0.1:$bao_port"
token_file = "$work/vault-token"
[admin]
listen = "127.0.0.1:$admin_port"
[audit]
output = "$work/audit.log"
[ledger]
EOF
echo "== starting the signer on 127.0.0.1:$signer_port (log: .quickstart/signer.log, audit trail: .quickstart/audit.log)"
"$bin" serve --config "$work/config.toml" >"$work/signer.log" 2>&1 &
pids+=($!)
wait_tcp "$signer_port" 30

echo "== requesting a certificate for spiffe://cluster.local/ns/default/sa/demo ($shape shape)"
"$bin" request --addr "127.0.0.1:$signer_port" --server-name localhost \
  --ca-file "$work/tls/root-cert.pem" --token-file "$work/jwt/token" \
  --identity spiffe://cluster.local/ns/default/sa/demo --shape "$shape" --out-dir "$work/workload"
echo "== done; the signer's request log and audit line:"
grep -h "CreateCertificate" "$work/signer.log" | tail -1
tail -n 1 "$work/audit.log"
