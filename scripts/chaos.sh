#!/usr/bin/env bash
# Fault-injection run against a real nacosd cluster (docs/FAULTS.md):
#
#   scripts/chaos.sh [--minutes N] [--seed S] [--nodes 3] [any other nacosd-chaos flag]
#
# Installs what it needs when missing (the build dependencies through scripts/setup.sh;
# iproute2 and iptables with apt-get), builds with `cargo build --all-targets` (honoring
# CARGO_TARGET_DIR), then runs nacosd-chaos, which prints the seed first and the tables
# last and keeps its output (node logs, history, faults, violations) under
# $CARGO_TARGET_DIR/chaos/<run id>/ (default target/chaos/<run id>/).
#
# Needs root (network namespaces, iptables): runs the runner through sudo when not root.
# Exit status is the runner's: 0 clean, 1 problems found, 2 harness error, 130 interrupted.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

log() { echo "chaos: $*"; }
die() { echo "chaos: error: $*" >&2; exit 2; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "network namespaces and iptables need root: run as root or install sudo"
fi

bash scripts/setup.sh

packages=()
command -v ip >/dev/null 2>&1 || packages+=(iproute2)
command -v iptables >/dev/null 2>&1 || packages+=(iptables)
{ [ -x /usr/bin/kill ] || [ -x /bin/kill ]; } || packages+=(procps)
if [ "${#packages[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
        || die "missing ${packages[*]} and no apt-get to install them; install them by hand"
    log "installing ${packages[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
log "cargo build --all-targets (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --all-targets

bin="$CARGO_TARGET_DIR/debug"
status=0
"${SUDO[@]}" env CARGO_TARGET_DIR="$CARGO_TARGET_DIR" \
    "$bin/nacosd-chaos" --nacosd "$bin/nacosd" "$@" || status=$?
exit "$status"
