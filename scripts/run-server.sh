#!/usr/bin/env bash
# Build (release) and run nacosd. With no arguments it starts a standalone node:
# client gRPC on 9848, peer gRPC on 7848, HTTP on 8848, data in ./nacosd-data
# (relative to the directory you run this from). Arguments go to nacosd, e.g.
#   ./scripts/run-server.sh --config deploy/nacosd.sample.toml
#   ./scripts/run-server.sh --help
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
bash "$root/scripts/setup.sh"
# Built from the checkout's root, where cargo finds .cargo/config.toml (its build
# flags); run from here, where a relative data directory is meant.
(cd "$root" && cargo build --release --bin nacosd)
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
exec "$target_dir/release/nacosd" "$@"
