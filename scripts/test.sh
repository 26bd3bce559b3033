#!/usr/bin/env bash
# Run the whole test suite: install build dependencies, then build and run every
# test target (cargo builds the binaries the multi-process tests spawn).
# Exits with cargo's status.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
cd "$root"

echo "==> setup: build dependencies"
NACOSD_SETUP_GRPCURL=1 NACOSD_SETUP_ETCD=1 bash scripts/setup.sh
# The benchmark test's etcd half skips when etcd is missing, except here: the suite
# installed etcd above, so a missing etcd is a failure, not a silent skip.
export NACOSD_REQUIRE_ETCD=1

echo "==> cargo test --all-targets"
status=0
cargo test --all-targets || status=$?
exit "$status"
