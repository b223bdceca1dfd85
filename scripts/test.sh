#!/usr/bin/env bash
# The full test suite: installs what the tests need (OpenBao, kubernetes-validate), then runs
# every test. Integration tests start their own OpenBao servers on free loopback ports;
# tests/deploy.rs also needs `kubectl` (with kustomize), which the project's machine image has.
set -euo pipefail
cd "$(dirname "$0")/.."
BAO_BIN=$(scripts/ensure-openbao.sh)
export BAO_BIN
echo "using $("$BAO_BIN" version)"
if ! python3 -c "import kubernetes_validate" 2>/dev/null; then
  echo "installing kubernetes-validate (pip install kubernetes-validate==1.37.0)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0" >&2 \
    || python3 -m pip install --quiet --disable-pip-version-check --user "kubernetes-validate==1.37.0" >&2
fi
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is required by tests/deploy.rs" >&2; exit 1; }
# A one-shot run gains nothing from incremental compilation, whose caches would add ~1 GB to
# a fresh clone's target/ (override by setting CARGO_INCREMENTAL yourself).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --all-targets --locked "$@"
