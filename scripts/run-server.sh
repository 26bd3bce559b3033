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
exec cargo run --manifest-path "$root/Cargo.toml" --release --bin nacosd -- "$@"
