#!/usr/bin/env bash
# The full test suite: installs what the tests need (OpenBao), then runs every test.
# Integration tests start their own OpenBao dev servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
BAO_BIN=$(scripts/ensure-openbao.sh)
export BAO_BIN
echo "using $("$BAO_BIN" version)"
cargo test --all-targets --locked "$@"
