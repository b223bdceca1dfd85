# Shared by the measurement scripts (bench.sh, syscalls.sh, nagle-latency.sh, instructions.sh): the
# signer binary to measure, free ports, waiting for an HTTP endpoint, a local OpenBao set up like the
# quickstart, and the signer's config and load for it. Source it after `cd` to the repository root.

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

# release_signer: sets bin to $BIN when given (measuring another build, an A/B comparison),
# else to the release binary, built first.
release_signer() {
  if [ -n "${BIN:-}" ]; then bin=$(realpath "$BIN"); return; fi
  bin=$PWD/target/release/istio-vault-ca
  local began
  began=$(date +%s)
  echo "building the release binary $bin (a first build takes ~10 minutes on 2 cores)..." >&2
  cargo build --release --locked --bin istio-vault-ca
  echo "built in $(( $(date +%s) - began ))s" >&2
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

# [server] lines that let the load generator, one address, use every slot (per-peer fairness
# is for meshes).
LOADGEN_LIMITS='max_in_flight = 512
[server.limits]
max_in_flight_per_peer = 512
max_connections_per_peer = 512
max_handshakes_per_second_per_peer = 0'

# signer_config OUT PORT ADMIN_PORT [SERVER_LINES] [MORE_SECTIONS]: writes OUT/config.toml for
# the signer on PORT against start_openbao's server; SERVER_LINES go into [server],
# MORE_SECTIONS after the rest. LOG_LEVEL, when set, is the signer's log.level.
signer_config() {
  local vault_ca_line="" log_section=""
  [ -n "${bao_ca:-}" ] && vault_ca_line="ca_file = \"$bao_ca\""
  [ -n "${LOG_LEVEL:-}" ] && log_section="[log]
level = \"$LOG_LEVEL\""
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
$log_section
${5:-}
EOT
}

# signer_load OUT PORT N CONCURRENCY [LOADGEN_ARGS...]: N requests, N new identities, to the
# signer on PORT; fails (printing the load generator's report) unless every one succeeded.
signer_load() {
  local out=$1 port=$2 n=$3 c=$4; shift 4
  "$bin" loadgen --addr "127.0.0.1:$port" --ca-file "$out/tls/root-cert.pem" --server-name localhost \
    --jwt-key "$out/jwt/jwt-key.pem" --identities "$n" --requests "$n" --concurrency "$c" "$@" \
    --progress 0s >"$out/load.$n" 2>&1
  grep -q "errors none" "$out/load.$n" || { cat "$out/load.$n" >&2; exit 1; }
}
