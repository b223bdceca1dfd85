#!/usr/bin/env bash
# The issued-certificate ledger's cost: the sign rate at c=32 through a signer with `[ledger]`
# and through one without, same OpenBao, same run, alternating (off, on, off, on). OpenBao runs
# as a single-node raft cluster (integrated storage, as in production: every KV write of the
# ledger and nothing else is a raft write; the PKI role is no_store), release build.
#   scripts/bench-ledger.sh              # 2 rounds of 10,000 requests per mode
#   N=20000 ROUNDS=3 scripts/bench-ledger.sh
# Prints throughput, p50/p99 and the signer's CPU per request per run, the on/off ratios, and
# what the ledger holds afterwards. Reports and logs in target/bench-ledger/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/target/bench-ledger
rm -rf "$out" && mkdir -p "$out"
BAO=$(scripts/ensure-openbao.sh)
. scripts/lib.sh
release_signer
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
n=${N:-10000}
rounds=${ROUNDS:-2}

echo "bench-ledger: single-node raft OpenBao" >&2
bao_port=$(free_port)
cluster_port=$(free_port)
bao_addr="http://127.0.0.1:$bao_port"
mkdir -p "$out/raft"
cat >"$out/bao.hcl" <<EOT
storage "raft" {
  path = "$out/raft"
  node_id = "node-1"
}
listener "tcp" {
  address = "127.0.0.1:$bao_port"
  tls_disable = true
}
api_addr = "$bao_addr"
cluster_addr = "http://127.0.0.1:$cluster_port"
disable_mlock = true
EOT
"$BAO" server -config="$out/bao.hcl" >"$out/openbao.log" 2>&1 &
bao_pid=$!
pids+=("$bao_pid")
python3 - "$bao_addr" "$out" <<'PY'
import json, sys, time, urllib.request
addr, out = sys.argv[1], sys.argv[2]
def call(method, path, body=None, token=None):
    req = urllib.request.Request(addr + "/v1/" + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
        return json.loads(text) if text else {}
for _ in range(300):
    try:
        call("GET", "sys/seal-status"); break
    except Exception:
        time.sleep(0.1)
init = call("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
call("PUT", "sys/unseal", {"key": init["keys"][0]})
for _ in range(300):
    try:
        if call("GET", "sys/leader").get("is_self"):
            break
    except Exception:
        pass
    time.sleep(0.2)
open(out + "/root-token", "w").write(init["root_token"])
PY
python3 deploy/vault/setup.py --addr "$bao_addr" --admin-token-file "$out/root-token" \
  --token-file "$out/vault-token" --serving-cert-dir "$out/tls" 2>"$out/setup.log"
"$bin" dev-issuer init --dir "$out/jwt" 2>/dev/null

start_signer() { # name, extra sections
  local port admin
  port=$(free_port); admin=$(free_port)
  mkdir -p "$out/$1"
  signer_config "$out/$1" "$port" "$admin" "$LOADGEN_LIMITS" "$2"
  # The serving certificate and JWT issuer are shared.
  sed -i "s#$out/$1/tls#$out/tls#g; s#$out/$1/jwt#$out/jwt#g; s#$out/$1/vault-token#$out/vault-token#g" "$out/$1/config.toml"
  "$bin" serve --config "$out/$1/config.toml" >"$out/$1/audit.log" 2>"$out/$1/signer.log" &
  pids+=($!)
  eval "${1}_pid=$!; ${1}_port=$port; ${1}_admin=$admin"
  wait_http "http://127.0.0.1:$admin/readyz"
}
start_signer off ""
start_signer on "[ledger]"

run() { # mode, round
  local port pid
  eval "port=\$${1}_port; pid=\$${1}_pid"
  echo "bench-ledger: ledger $1, round $2: $n requests at c=32" >&2
  "$bin" loadgen --addr "127.0.0.1:$port" --ca-file "$out/tls/root-cert.pem" --server-name localhost \
    --jwt-key "$out/jwt/jwt-key.pem" --identities "$n" --requests "$n" --concurrency 32 \
    --progress 0s --vault-pid "$bao_pid" --rss-pid "$pid" --json "$out/$1-$2.json" >/dev/null 2>"$out/$1-$2.log"
}
# Warm both (connection pools, the path cache, OpenBao's first requests).
n_saved=$n; n=1000; run off warm; run on warm; n=$n_saved
for r in $(seq 1 "$rounds"); do run off "$r"; run on "$r"; done
sleep 2 # the last batch (flush_interval 1 s)
python3 - "$out" "$rounds" "$on_admin" <<'PY'
import json, re, sys, urllib.request
out, rounds, admin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {m: [json.load(open(f"{out}/{m}-{r}.json")) for r in range(1, rounds + 1)] for m in ("off", "on")}
print("| run | requests | errors | throughput/s | p50 ms | p99 ms | signer CPU µs/req | OpenBao CPU µs/req |")
print("|---|---|---|---|---|---|---|---|")
for r in range(rounds):
    for m in ("off", "on"):
        x = rows[m][r]
        print(f"| ledger {m}, round {r + 1} | {x['requests']} | {sum(x['errors'].values())} | {x['throughput_per_s']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x.get('cpu_us_per_request') or 0:.0f} | {x.get('vault_cpu_us_per_request') or 0:.0f} |")
mean = lambda m, k: sum(x.get(k) or 0 for x in rows[m]) / rounds
print(f"\nsign rate, ledger on / off: {mean('on', 'throughput_per_s') / mean('off', 'throughput_per_s'):.1%} (goal >= 90%)")
print(f"signer CPU per request, on / off: {mean('on', 'cpu_us_per_request') / mean('off', 'cpu_us_per_request'):.2f}x")
print(f"OpenBao CPU per request, on / off: {mean('on', 'vault_cpu_us_per_request') / mean('off', 'vault_cpu_us_per_request'):.2f}x")
text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
for line in text.splitlines():
    if line.startswith("istio_vault_ca_ledger_records_total") or line.startswith("istio_vault_ca_ledger_failures_total"):
        print(line)
PY
