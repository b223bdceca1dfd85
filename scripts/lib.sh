# Shared by the measurement scripts (bench.sh, nagle-latency.sh, instructions.sh): free ports,
# waiting for an HTTP endpoint, a local OpenBao set up like the quickstart, and the signer's
# config for it. Source it after `cd` to the repository root.

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits (up to 60 s) until URL answers.
wait_http() {
  python3 - "$1" <<'PY'
import ssl, sys, time, urllib.request
# Only waiting for the port to answer: the certificate is checked by whoever uses it.
insecure = ssl.create_default_context()
insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
for _ in range(600):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1, context=insecure); sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("timed out waiting for " + sys.argv[1])
PY
}

# start_openbao OUT [PREFIX...]: starts `bao server -dev` (through PREFIX, e.g. `taskset -c 0`)
# on a free port, runs deploy/vault/setup.py into OUT (vault-token, tls/) and makes a dev JWT
# issuer in OUT/jwt. Sets bao_port, bao_pid and bao_addr, appends the pid to pids. Needs $BAO
# and $bin. VAULT_TLS=1: HTTPS (`-dev-tls`, its CA in OUT/vault-tls/vault-ca.pem, bao_ca), as
# Vault is reached in production (TLS, HTTP/2 by ALPN).
start_openbao() {
  local out=$1; shift
  bao_port=$(free_port)
  local tls=() scheme=http
  bao_ca=
  if [ -n "${VAULT_TLS:-}" ]; then
    mkdir -p "$out/vault-tls"
    tls=(-dev-tls -dev-tls-cert-dir="$out/vault-tls")
    scheme=https
    bao_ca=$out/vault-tls/vault-ca.pem
  fi
  bao_addr="$scheme://127.0.0.1:$bao_port"
  "$@" "$BAO" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bao_port" \
    -dev-no-store-token "${tls[@]}" >"$out/openbao.log" 2>&1 &
  bao_pid=$!
  pids+=("$bao_pid")
  wait_http "$bao_addr/v1/sys/health"
  python3 deploy/vault/setup.py --addr "$bao_addr" --token root ${bao_ca:+--cacert "$bao_ca"} \
    --token-file "$out/vault-token" --serving-cert-dir "$out/tls" 2>/dev/null
  "$bin" dev-issuer init --dir "$out/jwt" 2>/dev/null
}

# signer_config OUT PORT ADMIN_PORT [SERVER_LINES] [MORE_SECTIONS]: writes OUT/config.toml for
# the signer on PORT against start_openbao's server; SERVER_LINES go into [server],
# MORE_SECTIONS after the rest.
signer_config() {
  local vault_ca_line=""
  [ -n "${bao_ca:-}" ] && vault_ca_line="ca_file = \"$bao_ca\""
  cat >"$1/config.toml" <<EOT
[server]
listen = "127.0.0.1:$2"
cert_file = "$1/tls/tls.crt"
key_file = "$1/tls/tls.key"
${4:-}
[auth.jwt]
jwks_file = "$1/jwt/jwks.json"
[vault]
addr = "$bao_addr"
$vault_ca_line
token_file = "$1/vault-token"
[admin]
listen = "127.0.0.1:$3"
${5:-}
EOT
}
