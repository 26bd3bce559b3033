#!/usr/bin/env bash
# Makes (once) a Python virtual environment at DIR (default: target/nacos-sdk-venv)
# holding the Nacos SDK the compatibility tests drive (tests/integration/nacos_sdk.rs):
# nacos-sdk-python from PyPI, pinned. Does nothing when DIR already has that version.
# Needs python3 with its venv module (scripts/setup.sh installs them with
# NACOSD_SETUP_NACOS_SDK=1). Prints the venv's python on success.
set -euo pipefail

version="3.2.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-${CARGO_TARGET_DIR:-$root/target}/nacos-sdk-venv}"
py="$dir/bin/python"

have() {
    [ -x "$py" ] && "$py" -c "import sys, v2.nacos; sys.exit(v2.nacos.__version__ != '$version')" 2>/dev/null
}

if ! have; then
    echo "nacos-sdk-venv: installing nacos-sdk-python==$version into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "nacos-sdk-python==$version" >&2
    have || { echo "nacos-sdk-venv: nacos-sdk-python $version did not install" >&2; exit 1; }
fi
echo "$py"
